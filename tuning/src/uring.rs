//! Probing io_uring: set up a small ring with `io_uring_setup(2)` and ask the
//! kernel which opcodes it supports with `IORING_REGISTER_PROBE`
//! (`io_uring_register(2)`), through raw syscalls so no liburing is needed.
//!
//! The structures below mirror `include/uapi/linux/io_uring.h`; their sizes
//! are checked at compile time.

use std::io;

use serde::Serialize;

use crate::sysfs::SysRoot;

/// `struct io_sqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct SqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    flags: u32,
    dropped: u32,
    array: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_cqring_offsets`.
#[repr(C)]
#[derive(Default)]
struct CqringOffsets {
    head: u32,
    tail: u32,
    ring_mask: u32,
    ring_entries: u32,
    overflow: u32,
    cqes: u32,
    flags: u32,
    resv1: u32,
    user_addr: u64,
}

/// `struct io_uring_params`.
#[repr(C)]
#[derive(Default)]
struct Params {
    sq_entries: u32,
    cq_entries: u32,
    flags: u32,
    sq_thread_cpu: u32,
    sq_thread_idle: u32,
    features: u32,
    wq_fd: u32,
    resv: [u32; 3],
    sq_off: SqringOffsets,
    cq_off: CqringOffsets,
}

/// `struct io_uring_probe_op`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct ProbeOp {
    op: u8,
    resv: u8,
    flags: u16,
    resv2: u32,
}

/// Ops we ask about; the kernel fills at most this many.
const PROBE_OPS: usize = 256;

/// `struct io_uring_probe` followed by its flexible array.
#[repr(C)]
struct Probe {
    last_op: u8,
    ops_len: u8,
    resv: u16,
    resv2: [u32; 3],
    ops: [ProbeOp; PROBE_OPS],
}

const _: () = assert!(std::mem::size_of::<Params>() == 120);
const _: () = assert!(std::mem::size_of::<ProbeOp>() == 8);
const _: () = assert!(std::mem::size_of::<Probe>() == 16 + 8 * PROBE_OPS);

const IORING_REGISTER_PROBE: libc::c_uint = 8;
const IO_URING_OP_SUPPORTED: u16 = 1 << 0;

/// Opcode names, indexed by opcode (`enum io_uring_op`). Opcodes past the end
/// are reported by number.
pub const OPCODE_NAMES: &[&str] = &[
    "NOP",
    "READV",
    "WRITEV",
    "FSYNC",
    "READ_FIXED",
    "WRITE_FIXED",
    "POLL_ADD",
    "POLL_REMOVE",
    "SYNC_FILE_RANGE",
    "SENDMSG",
    "RECVMSG",
    "TIMEOUT",
    "TIMEOUT_REMOVE",
    "ACCEPT",
    "ASYNC_CANCEL",
    "LINK_TIMEOUT",
    "CONNECT",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "FILES_UPDATE",
    "STATX",
    "READ",
    "WRITE",
    "FADVISE",
    "MADVISE",
    "SEND",
    "RECV",
    "OPENAT2",
    "EPOLL_CTL",
    "SPLICE",
    "PROVIDE_BUFFERS",
    "REMOVE_BUFFERS",
    "TEE",
    "SHUTDOWN",
    "RENAMEAT",
    "UNLINKAT",
    "MKDIRAT",
    "SYMLINKAT",
    "LINKAT",
    "MSG_RING",
    "FSETXATTR",
    "SETXATTR",
    "FGETXATTR",
    "GETXATTR",
    "SOCKET",
    "URING_CMD",
    "SEND_ZC",
    "SENDMSG_ZC",
    "READ_MULTISHOT",
    "WAITID",
    "FUTEX_WAIT",
    "FUTEX_WAKE",
    "FUTEX_WAITV",
    "FIXED_FD_INSTALL",
    "FTRUNCATE",
    "BIND",
    "LISTEN",
    "RECV_ZC",
    "EPOLL_WAIT",
    "READV_FIXED",
    "WRITEV_FIXED",
    "PIPE",
];

/// Opcodes glommio and the Sluice engine and spool issue: storage reads and
/// writes, the group-commit fdatasync, segment reservation, sockets, timers
/// and cancellation.
pub const REQUIRED_OPCODES: &[&str] = &[
    "READ",
    "WRITE",
    "FSYNC",
    "FALLOCATE",
    "OPENAT",
    "CLOSE",
    "STATX",
    "ACCEPT",
    "CONNECT",
    "SEND",
    "RECV",
    "SENDMSG",
    "RECVMSG",
    "POLL_ADD",
    "TIMEOUT",
    "LINK_TIMEOUT",
    "ASYNC_CANCEL",
];

/// `IORING_FEAT_*` names by bit.
pub const FEATURE_NAMES: &[&str] = &[
    "SINGLE_MMAP",
    "NODROP",
    "SUBMIT_STABLE",
    "RW_CUR_POS",
    "CUR_PERSONALITY",
    "FAST_POLL",
    "POLL_32BITS",
    "SQPOLL_NONFIXED",
    "EXT_ARG",
    "NATIVE_WORKERS",
    "RSRC_TAGS",
    "CQE_SKIP",
    "LINKED_FILE",
    "REG_REG_RING",
    "RECVSEND_BUNDLE",
    "MIN_TIMEOUT",
    "RW_ATTR",
    "NO_IOWAIT",
];

/// What the kernel said.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct UringProbe {
    /// `kernel.io_uring_disabled`: 0 allowed, 1 only for `io_uring_group`
    /// members and privileged processes, 2 disabled. `None` when absent (older
    /// kernels, where io_uring is always allowed).
    pub disabled_sysctl: Option<u64>,
    /// Whether `io_uring_setup` succeeded.
    pub available: bool,
    /// The errno text when setup failed.
    pub setup_error: Option<String>,
    /// `IORING_FEAT_*` flags the kernel reported, by name (`BIT_n` for bits
    /// this tool does not know).
    pub features: Vec<String>,
    /// Supported opcodes, by name (`OP_n` for ones this tool does not know).
    pub supported_ops: Vec<String>,
    /// Entries of [`REQUIRED_OPCODES`] the kernel lacks.
    pub missing_required_ops: Vec<String>,
    /// Highest opcode number the kernel knows.
    pub last_op: Option<u8>,
}

/// Closes a file descriptor on drop.
struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: the descriptor came from a successful io_uring_setup and is
        // closed exactly once, here.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// Probes the running kernel; the sysctl is read under `root`.
pub fn probe(root: &SysRoot) -> UringProbe {
    let disabled_sysctl = root.read_u64("proc/sys/kernel/io_uring_disabled");
    let mut result = UringProbe {
        disabled_sysctl,
        available: false,
        setup_error: None,
        features: Vec::new(),
        supported_ops: Vec::new(),
        missing_required_ops: Vec::new(),
        last_op: None,
    };
    let mut params = Params::default();
    // SAFETY: io_uring_setup reads and writes exactly one `struct
    // io_uring_params`, which `Params` mirrors (size checked above).
    let fd = unsafe {
        libc::syscall(
            libc::SYS_io_uring_setup,
            4 as libc::c_uint,
            &mut params as *mut Params,
        )
    };
    if fd < 0 {
        let error = io::Error::last_os_error();
        result.setup_error = Some(describe_setup_error(&error));
        result.missing_required_ops = REQUIRED_OPCODES.iter().map(|s| s.to_string()).collect();
        return result;
    }
    // A file descriptor fits in c_int.
    let fd = Fd(fd as libc::c_int);
    result.available = true;
    result.features = (0..32)
        .filter(|bit| params.features & (1 << bit) != 0)
        .map(|bit| {
            FEATURE_NAMES
                .get(bit)
                .map_or(format!("BIT_{bit}"), |n| n.to_string())
        })
        .collect();

    let mut probe = Probe {
        last_op: 0,
        ops_len: 0,
        resv: 0,
        resv2: [0; 3],
        ops: [ProbeOp::default(); PROBE_OPS],
    };
    // SAFETY: IORING_REGISTER_PROBE writes a `struct io_uring_probe` with at
    // most `nr_args` (PROBE_OPS) ops, which `Probe` has room for.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            fd.0,
            IORING_REGISTER_PROBE,
            &mut probe as *mut Probe,
            PROBE_OPS as libc::c_uint,
        )
    };
    if rc < 0 {
        // Kernels before 5.6 have no probe; the ring itself works.
        result.setup_error = Some(format!(
            "IORING_REGISTER_PROBE failed: {}",
            io::Error::last_os_error()
        ));
        result.missing_required_ops = REQUIRED_OPCODES.iter().map(|s| s.to_string()).collect();
        return result;
    }
    result.last_op = Some(probe.last_op);
    let ops_len = usize::from(probe.ops_len).min(PROBE_OPS);
    result.supported_ops = probe.ops[..ops_len]
        .iter()
        .filter(|op| op.flags & IO_URING_OP_SUPPORTED != 0)
        .map(|op| opcode_name(op.op))
        .collect();
    result.missing_required_ops = REQUIRED_OPCODES
        .iter()
        .filter(|name| !result.supported_ops.iter().any(|op| op == *name))
        .map(|s| s.to_string())
        .collect();
    result
}

/// The name of opcode `op`.
pub fn opcode_name(op: u8) -> String {
    OPCODE_NAMES
        .get(usize::from(op))
        .map_or(format!("OP_{op}"), |n| n.to_string())
}

fn describe_setup_error(error: &io::Error) -> String {
    let hint = match error.raw_os_error() {
        Some(libc::ENOSYS) => "kernel built without io_uring (needs Linux 5.8+ for glommio)",
        Some(libc::EPERM) => "io_uring denied (kernel.io_uring_disabled, seccomp or a container)",
        Some(libc::ENOMEM) => "could not lock the ring's memory (raise RLIMIT_MEMLOCK)",
        _ => "unexpected error",
    };
    format!("io_uring_setup: {error}: {hint}")
}
