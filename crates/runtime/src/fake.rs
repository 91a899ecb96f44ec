//! In-process fake runtime for service tests (filled in by the server work).
