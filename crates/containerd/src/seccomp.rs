//! The seccomp filter of every worker (security review H4): the default profile of
//! containerd/Docker (`contrib/seccomp`, moby `profiles/seccomp`) rendered for x86-64 and for
//! the worker capability set of `spec.rs` (no `CAP_SYS_ADMIN`, `CAP_SYS_PTRACE`, …, so the
//! capability-gated groups of the upstream profile reduce to what is listed here). Anything
//! not allowed fails with `EPERM`: namespaces (`unshare`, `setns`, `clone` with namespace
//! flags), `mount`, `bpf`, `keyctl`, `perf_event_open`, `userfaultfd`, module loading, `kexec`.
//! runc skips names its libseccomp does not know, so newer syscalls listed here are harmless.

use serde_json::{Value, json};

const EPERM: u32 = 1;
const ENOSYS: u32 = 38;
/// `AF_VSOCK`: sockets of this family are refused (host/guest channel).
const AF_VSOCK: u64 = 40;
/// `CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |
/// CLONE_NEWPID | CLONE_NEWNET`: `clone` is allowed only with none of them.
const CLONE_NAMESPACE_FLAGS: u64 = 0x7E02_0000;
/// `personality` values allowed: `PER_LINUX`, `PER_LINUX32`, `UNAME26`,
/// `UNAME26 | PER_LINUX32`, and the query `0xffffffff`.
const PERSONALITIES: [u64; 5] = [0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff];

/// Allowed for every process (the unconditional group of the upstream profile), as
/// whitespace-separated names; `#` starts a comment up to the end of the line.
const ALLOWED: &str = "
    accept accept4 access adjtimex alarm bind brk capget capset
    chdir chmod chown chown32 clock_adjtime clock_adjtime64 clock_getres
    clock_getres_time64 clock_gettime clock_gettime64 clock_nanosleep
    clock_nanosleep_time64 close close_range connect copy_file_range creat
    dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old
    epoll_pwait epoll_pwait2 epoll_wait epoll_wait_old eventfd eventfd2
    execve execveat exit exit_group faccessat faccessat2 fadvise64
    fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat fchown
    fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr flistxattr flock
    fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs
    fstatfs64 fsync ftruncate ftruncate64 futex futex_time64 futex_waitv
    futimesat getcpu getcwd getdents getdents64 getegid getegid32
    geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer
    getpeername getpgid getpgrp getpid getppid getpriority getrandom
    getresgid getresgid32 getresuid getresuid32 getrlimit get_robust_list
    getrusage getsid getsockname getsockopt get_thread_area gettid
    gettimeofday getuid getuid32 getxattr inotify_add_watch inotify_init
    inotify_init1 inotify_rm_watch io_cancel ioctl io_destroy io_getevents
    io_pgetevents io_pgetevents_time64 ioprio_get ioprio_set io_setup
    io_submit io_uring_enter io_uring_register io_uring_setup ipc kill
    landlock_add_rule landlock_create_ruleset landlock_restrict_self lchown
    lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek
    lremovexattr lseek lsetxattr lstat lstat64 madvise membarrier
    memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat mlock
    mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open
    mq_timedreceive mq_timedreceive_time64 mq_timedsend mq_timedsend_time64
    mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock
    munlockall munmap name_to_handle_at nanosleep newfstatat _newselect
    open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
    pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl
    pread64 preadv preadv2 prlimit64 process_mrelease pselect6
    pselect6_time64 pwrite64 pwritev pwritev2 read readahead readlink
    readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg
    remap_file_pages removexattr rename renameat renameat2 restart_syscall
    rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
    rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64
    rt_tgsigqueueinfo sched_getaffinity sched_getattr sched_getparam
    sched_get_priority_max sched_get_priority_min sched_getscheduler
    sched_rr_get_interval sched_rr_get_interval_time64 sched_setaffinity
    sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
    select semctl semget semop semtimedop semtimedop_time64 send
    sendfile sendfile64 sendmmsg sendmsg sendto setfsgid setfsgid32
    setfsuid setfsuid32 setgid setgid32 setgroups setgroups32 setitimer
    setpgid setpriority setregid setregid32 setresgid setresgid32
    setresuid setresuid32 setreuid setreuid32 setrlimit set_robust_list
    setsid setsockopt set_thread_area set_tid_address setuid setuid32
    setxattr shmat shmctl shmdt shmget shutdown sigaltstack signalfd
    signalfd4 sigprocmask sigreturn socketcall socketpair splice stat
    stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range
    syncfs sysinfo tee tgkill time timer_create timer_delete
    timer_getoverrun timer_gettime timer_gettime64 timer_settime
    timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64 times tkill truncate truncate64
    ugetrlimit umask uname unlink unlinkat utime utimensat
    utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write
    writev
    # Kernel >= 4.8 (ptrace can no longer bypass seccomp), as upstream.
    process_vm_readv process_vm_writev ptrace
    # x86-64 only.
    arch_prctl modify_ldt
    # Gated on CAP_SYS_CHROOT, which workers keep.
    chroot
";

fn allowed() -> Vec<&'static str> {
    ALLOWED
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default())
        .flat_map(str::split_whitespace)
        .collect()
}

/// The `linux.seccomp` object of the OCI spec.
pub(crate) fn profile() -> Value {
    let mut rules = vec![json!({"names": allowed(), "action": "SCMP_ACT_ALLOW"})];
    rules.push(json!({
        "names": ["socket"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": AF_VSOCK, "op": "SCMP_CMP_NE"}]
    }));
    for value in PERSONALITIES {
        rules.push(json!({
            "names": ["personality"], "action": "SCMP_ACT_ALLOW",
            "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}]
        }));
    }
    rules.push(json!({
        "names": ["clone"], "action": "SCMP_ACT_ALLOW",
        "args": [{"index": 0, "value": CLONE_NAMESPACE_FLAGS, "valueTwo": 0,
                  "op": "SCMP_CMP_MASKED_EQ"}]
    }));
    // clone3's flags live in a struct seccomp cannot inspect: ENOSYS makes libc fall back
    // to clone, whose flags are checked above.
    rules.push(json!({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS}));
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": EPERM,
        "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "syscalls": rules
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_denies_namespaces_and_kernel_attack_surface() {
        let p = profile();
        let spec: oci_spec::runtime::LinuxSeccomp =
            serde_json::from_value(p.clone()).expect("valid OCI seccomp");
        assert_eq!(
            spec.default_action(),
            oci_spec::runtime::LinuxSeccompAction::ScmpActErrno
        );
        let allowed: Vec<&str> = spec
            .syscalls()
            .iter()
            .flatten()
            .filter(|s| {
                s.action() == oci_spec::runtime::LinuxSeccompAction::ScmpActAllow
                    && s.args().as_ref().is_none_or(|a| a.is_empty())
            })
            .flat_map(|s| s.names().iter().map(String::as_str))
            .collect();
        for denied in [
            "unshare",
            "setns",
            "mount",
            "umount2",
            "bpf",
            "keyctl",
            "add_key",
            "perf_event_open",
            "userfaultfd",
            "init_module",
            "kexec_load",
            "clone",
            "clone3",
            "pivot_root",
            "open_by_handle_at",
            "reboot",
            "syslog",
        ] {
            assert!(
                !allowed.contains(&denied),
                "{denied} must not be allowed unconditionally"
            );
        }
        for needed in ["read", "write", "execve", "futex", "epoll_wait", "accept4"] {
            assert!(allowed.contains(&needed), "{needed}");
        }
        let mut names = super::allowed();
        let n = names.len();
        assert!(n > 300, "{n}");
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), n, "no duplicates");
    }
}
