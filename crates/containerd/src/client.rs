//! The containerd gRPC connection: unix-socket channel, namespace (and lease) metadata on
//! every request, bounded connect retry, and the mapping of gRPC statuses to error kinds.

use std::path::{Path, PathBuf};
use std::time::Duration;

use containerd_client::services::v1::namespaces_client::NamespacesClient;
use containerd_client::services::v1::{
    CreateNamespaceRequest, GetNamespaceRequest, Namespace, containers_client::ContainersClient,
    content_client::ContentClient, diff_client::DiffClient, events_client::EventsClient,
    images_client::ImagesClient, leases_client::LeasesClient,
    snapshots::snapshots_client::SnapshotsClient, tasks_client::TasksClient,
    version_client::VersionClient,
};
use esb_runtime::{ErrorKind, RuntimeError};
use hyper_util::rt::TokioIo;
use tonic::metadata::{AsciiMetadataValue, MetadataValue};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

/// Total time `connect` keeps retrying a missing or refusing socket.
const CONNECT_BUDGET: Duration = Duration::from_secs(15);
/// Bound of cheap unary calls (ping, get, list).
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// A cloneable handle on containerd scoped to one namespace.
#[derive(Clone)]
pub(crate) struct Client {
    channel: Channel,
    namespace: String,
    ns_header: AsciiMetadataValue,
}

impl Client {
    /// Connects with bounded retry; later disconnects are healed lazily by the channel.
    pub(crate) async fn connect(socket: &Path, namespace: &str) -> Result<Self, RuntimeError> {
        let ns_header: AsciiMetadataValue = MetadataValue::try_from(namespace).map_err(|e| {
            RuntimeError::invalid_argument(format!("invalid containerd namespace {namespace:?}"))
                .with_source(e)
        })?;
        let endpoint = Endpoint::try_from("http://[::]")
            .map_err(|e| RuntimeError::internal("containerd endpoint").with_source(e))?
            .connect_timeout(Duration::from_secs(2));
        let path: PathBuf = socket.to_path_buf();
        let start = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        let channel = loop {
            let path = path.clone();
            let connector = tower::service_fn(move |_| {
                let path = path.clone();
                async move {
                    Ok::<_, std::io::Error>(TokioIo::new(
                        tokio::net::UnixStream::connect(path).await?,
                    ))
                }
            });
            match endpoint.connect_with_connector(connector).await {
                Ok(ch) => break ch,
                Err(e) if start.elapsed() + delay < CONNECT_BUDGET => {
                    tracing::warn!(socket = %socket.display(), error = %e, "containerd not reachable yet; retrying");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
                Err(e) => {
                    return Err(RuntimeError::unavailable(format!(
                        "containerd unreachable at {}",
                        socket.display()
                    ))
                    .with_source(e));
                }
            }
        };
        let client = Self {
            channel,
            namespace: namespace.to_string(),
            ns_header,
        };
        client.ensure_namespace().await?;
        Ok(client)
    }

    /// Creates the namespace when missing (1.6 wants the namespace header even here).
    async fn ensure_namespace(&self) -> Result<(), RuntimeError> {
        let mut ns = NamespacesClient::new(self.channel.clone());
        let get = GetNamespaceRequest {
            name: self.namespace.clone(),
        };
        match ns.get(self.req(get)).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == Code::NotFound => {}
            Err(s) => return Err(status_err("get namespace", s)),
        }
        let create = CreateNamespaceRequest {
            namespace: Some(Namespace {
                name: self.namespace.clone(),
                labels: Default::default(),
            }),
        };
        match ns.create(self.req(create)).await {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::AlreadyExists => Ok(()),
            // 1.6 may report an error after creating; trust a second lookup.
            Err(s) => match ns
                .get(self.req(GetNamespaceRequest {
                    name: self.namespace.clone(),
                }))
                .await
            {
                Ok(_) => Ok(()),
                Err(_) => Err(status_err("create namespace", s)),
            },
        }
    }

    pub(crate) fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A request carrying the namespace header.
    pub(crate) fn req<T>(&self, msg: T) -> Request<T> {
        let mut req = Request::new(msg);
        req.metadata_mut()
            .insert("containerd-namespace", self.ns_header.clone());
        req
    }

    /// A request carrying the namespace and lease headers.
    pub(crate) fn leased<T>(&self, msg: T, lease: &str) -> Request<T> {
        let mut req = self.req(msg);
        if let Ok(v) = MetadataValue::try_from(lease) {
            req.metadata_mut().insert("containerd-lease", v);
        }
        req
    }

    /// Same as [`Client::req`] with a deadline.
    pub(crate) fn req_t<T>(&self, msg: T) -> Request<T> {
        let mut req = self.req(msg);
        req.set_timeout(CALL_TIMEOUT);
        req
    }

    pub(crate) fn containers(&self) -> ContainersClient<Channel> {
        ContainersClient::new(self.channel.clone())
    }
    pub(crate) fn content(&self) -> ContentClient<Channel> {
        ContentClient::new(self.channel.clone())
    }
    pub(crate) fn diff(&self) -> DiffClient<Channel> {
        DiffClient::new(self.channel.clone())
    }
    pub(crate) fn events(&self) -> EventsClient<Channel> {
        EventsClient::new(self.channel.clone())
    }
    pub(crate) fn images(&self) -> ImagesClient<Channel> {
        ImagesClient::new(self.channel.clone())
    }
    pub(crate) fn leases(&self) -> LeasesClient<Channel> {
        LeasesClient::new(self.channel.clone())
    }
    pub(crate) fn snapshots(&self) -> SnapshotsClient<Channel> {
        SnapshotsClient::new(self.channel.clone())
    }
    pub(crate) fn tasks(&self) -> TasksClient<Channel> {
        TasksClient::new(self.channel.clone())
    }
    pub(crate) fn version(&self) -> VersionClient<Channel> {
        VersionClient::new(self.channel.clone())
    }
}

/// Maps a containerd gRPC status to a runtime error, keeping the code's meaning.
pub(crate) fn status_err(what: &str, s: Status) -> RuntimeError {
    let kind = match s.code() {
        // A call cut by the connection (daemon stopped, restarting): tonic reports it as
        // Unknown/Cancelled with a transport error as the source. The daemon is unreachable,
        // so the caller may retry elsewhere (UNAVAILABLE), not a fault of ours (INTERNAL).
        Code::Unknown | Code::Cancelled if is_transport(&s) => ErrorKind::Unavailable,
        Code::NotFound => ErrorKind::NotFound,
        Code::InvalidArgument => ErrorKind::InvalidArgument,
        Code::FailedPrecondition => ErrorKind::FailedPrecondition,
        Code::ResourceExhausted => ErrorKind::ResourceExhausted,
        Code::Unavailable => ErrorKind::Unavailable,
        Code::DeadlineExceeded => ErrorKind::DeadlineExceeded,
        Code::Unimplemented => ErrorKind::Unimplemented,
        _ => ErrorKind::Internal,
    };
    let msg = format!("containerd {what}: {}", s.message());
    RuntimeError::new(kind, msg).with_source(StatusSource(s))
}

/// A status kept as an error's source without repeating its message (already in ours): it
/// shows the code, and its own source (e.g. the transport error) follows in the chain.
#[derive(Debug)]
struct StatusSource(Status);

impl std::fmt::Display for StatusSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "containerd status {:?}", self.0.code())
    }
}

impl std::error::Error for StatusSource {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0)
    }
}

/// True when `s` was made from a transport failure, not sent by containerd.
fn is_transport(s: &Status) -> bool {
    let mut src = std::error::Error::source(s);
    while let Some(e) = src {
        if e.is::<tonic::transport::Error>() {
            return true;
        }
        src = e.source();
    }
    false
}

/// True when the status means "does not exist".
pub(crate) fn is_not_found(s: &Status) -> bool {
    s.code() == Code::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chain_says_the_daemon_message_once_and_keeps_the_code() {
        let s = Status::already_exists("blob sha256:abc exists");
        let e = status_err("write content", s);
        let chain = e.chain();
        assert_eq!(
            chain.matches("blob sha256:abc exists").count(),
            1,
            "{chain}"
        );
        assert!(chain.contains("AlreadyExists"), "{chain}");
        assert_eq!(
            e.message(),
            "containerd write content: blob sha256:abc exists"
        );
    }
}
