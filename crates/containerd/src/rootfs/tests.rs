//! Unit tests of the in-image file reader: hostile symlinks, devices, FIFOs, size cap,
//! overlay whiteouts and opaque directories, on temp-dir layers.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

const HOST_PASSWD: &str = "root:x:0:0::/root:/bin/sh\nhostonly:x:4242:4242::/:/bin/sh\n";
const IMAGE_PASSWD: &str = "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n";

/// A temp dir holding `outside/passwd` (a stand-in for a host file) and layer dirs.
struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("outside")).expect("mkdir");
        std::fs::write(dir.path().join("outside/passwd"), HOST_PASSWD).expect("write");
        Self { dir }
    }

    /// Layer `name` with an `etc` directory.
    fn layer(&self, name: &str) -> PathBuf {
        let l = self.dir.path().join("layers").join(name);
        std::fs::create_dir_all(l.join("etc")).expect("mkdir layer");
        l
    }

    fn outside(&self) -> PathBuf {
        self.dir.path().join("outside/passwd")
    }
}

fn read(layers: &[&Path], path: &str) -> Result<Option<String>, RootfsError> {
    Layers::open(layers)?
        .read(path)
        .map(|o| o.map(|b| String::from_utf8_lossy(&b).into_owned()))
}

#[test]
fn reads_a_plain_file_and_reports_a_missing_one() {
    let f = Fixture::new();
    let l = f.layer("l0");
    std::fs::write(l.join("etc/passwd"), IMAGE_PASSWD).expect("write");
    assert_eq!(
        read(&[&l], "etc/passwd").expect("read").as_deref(),
        Some(IMAGE_PASSWD)
    );
    assert_eq!(
        read(&[&l], "/etc/./passwd").expect("read").as_deref(),
        Some(IMAGE_PASSWD)
    );
    assert!(read(&[&l], "etc/group").expect("read").is_none());
    assert!(read(&[&l], "etc/passwd/x").expect("read").is_none());
    assert!(matches!(read(&[&l], "etc"), Err(RootfsError::NotRegular)));
}

#[test]
fn absolute_symlink_to_a_host_file_is_resolved_inside_the_image() {
    let f = Fixture::new();
    let l = f.layer("l0");
    // The host's file exists at this absolute path; the image has nothing there.
    symlink(f.outside(), l.join("etc/passwd")).expect("symlink");
    assert!(read(&[&l], "etc/passwd").expect("read").is_none());
    // A link to the image's own /etc/passwd loops and is refused, not read from the host.
    let l1 = f.layer("l1");
    symlink("/etc/passwd", l1.join("etc/passwd")).expect("symlink");
    assert!(matches!(
        read(&[&l1], "etc/passwd"),
        Err(RootfsError::SymlinkLoop)
    ));
}

#[test]
fn relative_symlink_cannot_climb_out_of_the_image() {
    let f = Fixture::new();
    let l = f.layer("l0");
    // From <tmp>/layers/l0/etc this names <tmp>/outside/passwd on the host.
    symlink("../../../outside/passwd", l.join("etc/passwd")).expect("symlink");
    assert!(
        std::fs::read_to_string(l.join("etc/passwd")).is_ok(),
        "the naive host read would succeed"
    );
    assert!(read(&[&l], "etc/passwd").expect("read").is_none());
    let l1 = f.layer("l1");
    symlink("../../../../etc/passwd", l1.join("etc/passwd")).expect("symlink");
    assert!(matches!(
        read(&[&l1], "etc/passwd"),
        Err(RootfsError::SymlinkLoop)
    ));
}

#[test]
fn symlinks_inside_the_image_are_followed_across_layers() {
    let f = Fixture::new();
    let upper = f.layer("upper");
    let lower = f.layer("lower");
    symlink("../data/passwd", upper.join("etc/passwd")).expect("symlink");
    std::fs::create_dir_all(lower.join("data")).expect("mkdir");
    std::fs::write(lower.join("data/passwd"), IMAGE_PASSWD).expect("write");
    assert_eq!(
        read(&[&upper, &lower], "etc/passwd")
            .expect("read")
            .as_deref(),
        Some(IMAGE_PASSWD)
    );
}

#[test]
fn dev_zero_fails_fast() {
    let f = Fixture::new();
    let l = f.layer("l0");
    symlink("/dev/zero", l.join("etc/passwd")).expect("symlink");
    let t = Instant::now();
    assert!(read(&[&l], "etc/passwd").expect("read").is_none());
    // The image's own /dev/zero (a device node in a layer) is never opened.
    let l1 = f.layer("l1");
    symlink("/dev/zero", l1.join("etc/passwd")).expect("symlink");
    std::fs::create_dir_all(l1.join("dev")).expect("mkdir");
    symlink("/dev/zero", l1.join("dev/zero")).expect("loop");
    assert!(read(&[&l1], "etc/passwd").is_err());
    if nix::unistd::geteuid().is_root() {
        let l2 = f.layer("l2");
        nix::sys::stat::mknod(
            &l2.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::from_bits_truncate(0o666),
            nix::sys::stat::makedev(1, 5),
        )
        .expect("mknod /dev/zero twin");
        assert!(matches!(
            read(&[&l2], "etc/passwd"),
            Err(RootfsError::NotRegular)
        ));
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}

#[test]
fn fifo_does_not_block() {
    let f = Fixture::new();
    let l = f.layer("l0");
    nix::unistd::mkfifo(
        &l.join("etc/passwd"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    let fifo_via_link = f.layer("l1");
    std::fs::create_dir_all(fifo_via_link.join("run")).expect("mkdir");
    nix::unistd::mkfifo(
        &fifo_via_link.join("run/p"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .expect("mkfifo");
    symlink("/run/p", fifo_via_link.join("etc/passwd")).expect("symlink");
    let (tx, rx) = std::sync::mpsc::channel();
    let (a, b) = (l.clone(), fifo_via_link.clone());
    std::thread::spawn(move || {
        let r1 = read(&[&a], "etc/passwd");
        let r2 = read(&[&b], "etc/passwd");
        let _ = tx.send((r1.is_err(), r2.is_err()));
    });
    let (e1, e2) = rx
        .recv_timeout(Duration::from_secs(2))
        .expect("reading a FIFO must not block");
    assert!(e1 && e2);
}

#[test]
fn oversized_file_is_refused() {
    let f = Fixture::new();
    let l = f.layer("l0");
    let big = vec![b'x'; (MAX_FILE_BYTES + 1) as usize];
    std::fs::write(l.join("etc/passwd"), big).expect("write");
    assert!(matches!(
        read(&[&l], "etc/passwd"),
        Err(RootfsError::TooLarge)
    ));
}

#[test]
fn whiteouts_and_opaque_dirs_end_the_search() {
    let f = Fixture::new();
    let upper = f.layer("upper");
    let lower = f.layer("lower");
    std::fs::write(lower.join("etc/passwd"), IMAGE_PASSWD).expect("write");
    std::fs::write(lower.join("etc/group"), "root:x:0:\n").expect("write");
    assert!(
        read(&[&upper, &lower], "etc/passwd")
            .expect("read")
            .is_some()
    );
    // OCI-format whiteout file.
    std::fs::write(upper.join(".wh.etc"), "").expect("whiteout");
    assert!(
        read(&[&upper, &lower], "etc/passwd")
            .expect("read")
            .is_none()
    );
    std::fs::remove_file(upper.join(".wh.etc")).expect("rm");
    // OCI-format opaque directory.
    std::fs::write(upper.join("etc/.wh..wh..opq"), "").expect("opaque");
    assert!(
        read(&[&upper, &lower], "etc/group")
            .expect("read")
            .is_none()
    );
    std::fs::remove_file(upper.join("etc/.wh..wh..opq")).expect("rm");
    // A file in the upper layer hides a lower directory of the same name.
    let top = f.layer("top");
    std::fs::remove_dir(top.join("etc")).expect("rmdir");
    std::fs::write(top.join("etc"), "").expect("file");
    assert!(
        read(&[&top, &upper, &lower], "etc/passwd")
            .expect("read")
            .is_none()
    );
    if nix::unistd::geteuid().is_root() {
        // overlayfs whiteout: a 0/0 character device.
        nix::sys::stat::mknod(
            &upper.join("etc/passwd"),
            nix::sys::stat::SFlag::S_IFCHR,
            nix::sys::stat::Mode::empty(),
            nix::sys::stat::makedev(0, 0),
        )
        .expect("mknod whiteout");
        assert!(
            read(&[&upper, &lower], "etc/passwd")
                .expect("read")
                .is_none()
        );
        assert!(
            read(&[&upper, &lower], "etc/group")
                .expect("read")
                .is_some()
        );
    }
}
