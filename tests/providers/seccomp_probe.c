/*
 * The seccomp filter's test probe (tests/providers/test_local_seccomp.py).
 *
 *   probe setup-exec CMD...  outside any filter: give this process a fresh session keyring
 *                            holding the key "sbx-probe" (the host secret an attack reads),
 *                            put a file handle of /etc/hostname in $SBX_HANDLE, exec CMD
 *   probe table              inside: each call in its own child; prints "name errno" (0 =
 *                            the call succeeded). Arguments are real where the call is
 *                            safe (an attack that works without the filter) and harmless
 *                            (bad magic, missing paths) where success would hurt the host.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/perf_event.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/timex.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define KEY_SPEC_SESSION_KEYRING -3
#define KEYCTL_JOIN_SESSION_KEYRING 1
#define KEYCTL_SEARCH 10
#define KEYCTL_READ 11
#define SECRET "sbx-secret-value"
#define NOWHERE "/nonexistent-sbx-probe"

static long sys_ret(long r) { return r < 0 ? errno : 0; }

/* Raw clone/clone3 children exit at once; the parent reaps them. */
static long cloned(long pid) {
    if (pid < 0) return errno;
    if (pid == 0) _exit(0);
    waitpid((pid_t)pid, NULL, __WALL);
    return 0;
}

static long read_key(void) {
    long key = syscall(SYS_keyctl, KEYCTL_SEARCH, KEY_SPEC_SESSION_KEYRING, "user", "sbx-probe", 0);
    if (key < 0) return errno;
    char buf[64] = {0};
    long n = syscall(SYS_keyctl, KEYCTL_READ, key, buf, sizeof buf - 1);
    if (n < 0) return errno;
    return strcmp(buf, SECRET) == 0 ? 0 : EBADMSG;
}

static long mount_tmpfs(void) {
    long r = sys_ret(mount("none", "/tmp", "tmpfs", 0, "size=1m"));
    if (r == 0) umount2("/tmp", MNT_DETACH);
    return r;
}

static long bpf_map(void) {
    union bpf_attr attr = {.map_type = BPF_MAP_TYPE_ARRAY, .key_size = 4, .value_size = 4,
                           .max_entries = 1};
    return sys_ret(syscall(SYS_bpf, BPF_MAP_CREATE, &attr, sizeof attr));
}

static long perf_open(void) {
    struct perf_event_attr attr = {.type = PERF_TYPE_SOFTWARE, .size = sizeof attr,
                                   .config = PERF_COUNT_SW_TASK_CLOCK, .exclude_kernel = 1,
                                   .exclude_hv = 1};
    return sys_ret(syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0));
}

/* The "shocker" escape: a handle made outside opens the file without any path. */
static long open_handle(void) {
    const char *hex = getenv("SBX_HANDLE");
    if (hex == NULL) return ENODATA;
    struct { struct file_handle h; unsigned char bytes[128]; } buf = {0};
    size_t len = strlen(hex) / 2;
    unsigned char raw[sizeof buf];
    for (size_t i = 0; i < len && i < sizeof raw; i++) sscanf(hex + 2 * i, "%2hhx", &raw[i]);
    memcpy(&buf, raw, len < sizeof buf ? len : sizeof buf);
    int root = open("/", O_RDONLY | O_DIRECTORY);
    return sys_ret(syscall(SYS_open_by_handle_at, root, &buf.h, O_RDONLY));
}

static long name_handle(void) {
    struct { struct file_handle h; unsigned char bytes[128]; } buf = {.h.handle_bytes = 128};
    int mount_id;
    return sys_ret(syscall(SYS_name_to_handle_at, AT_FDCWD, "/", &buf.h, &mount_id, 0));
}

static long clone3_plain(void) {
    uint64_t args[11] = {0};
    args[4] = SIGCHLD; /* struct clone_args.exit_signal */
    return cloned(syscall(SYS_clone3, args, 88));
}

static long vm_readv(void) {
    char src[8] = "abc", dst[8];
    struct iovec local = {dst, sizeof dst}, remote = {src, sizeof src};
    return sys_ret(process_vm_readv(getpid(), &local, 1, &remote, 1, 0));
}

static long do_fork(void) { return cloned(fork()); }

struct entry { const char *name; long (*call)(void); };
#define E(n, expr) static long call_##n(void) { return expr; }
E(keyctl, read_key())
E(add_key, sys_ret(syscall(SYS_add_key, "user", "sbx-probe-2", "x", 1, KEY_SPEC_SESSION_KEYRING)))
E(request_key, sys_ret(syscall(SYS_request_key, "user", "sbx-probe", NULL, 0)))
E(unshare_user, sys_ret(unshare(CLONE_NEWUSER)))
E(unshare_mount, sys_ret(unshare(CLONE_NEWNS)))
E(setns, sys_ret(setns(-1, 0)))
E(mount_tmpfs, mount_tmpfs())
E(umount2, sys_ret(umount2(NOWHERE, 0)))
E(pivot_root, sys_ret(syscall(SYS_pivot_root, NOWHERE, NOWHERE)))
E(open_tree, sys_ret(syscall(SYS_open_tree, AT_FDCWD, NOWHERE, 0)))
E(move_mount, sys_ret(syscall(SYS_move_mount, -1, "", -1, "", 0)))
E(mount_setattr, sys_ret(syscall(SYS_mount_setattr, -1, "", 0, NULL, 0)))
E(fsopen, sys_ret(syscall(SYS_fsopen, "sbx-no-such-fs", 0)))
E(fsconfig, sys_ret(syscall(SYS_fsconfig, -1, 0, NULL, NULL, 0)))
E(fsmount, sys_ret(syscall(SYS_fsmount, -1, 0, 0)))
E(fspick, sys_ret(syscall(SYS_fspick, AT_FDCWD, NOWHERE, 0)))
E(clone_newnet, cloned(syscall(SYS_clone, CLONE_NEWNET | SIGCHLD, 0, 0, 0, 0)))
E(clone_newuser, cloned(syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0)))
E(clone_newpid, cloned(syscall(SYS_clone, CLONE_NEWPID | SIGCHLD, 0, 0, 0, 0)))
E(bpf, bpf_map())
E(perf_event_open, perf_open())
E(userfaultfd, sys_ret(syscall(SYS_userfaultfd, O_CLOEXEC)))
E(open_by_handle_at, open_handle())
E(name_to_handle_at, name_handle())
E(init_module, sys_ret(syscall(SYS_init_module, "garbage-not-a-module", 20, "")))
E(finit_module, sys_ret(syscall(SYS_finit_module, -1, "", 0)))
E(delete_module, sys_ret(syscall(SYS_delete_module, "sbx_no_such_module", O_NONBLOCK)))
E(kexec_load, sys_ret(syscall(SYS_kexec_load, 0, 0, NULL, 0xdead0000ul)))
E(io_uring_setup, sys_ret(syscall(SYS_io_uring_setup, 1, (char[120]){0})))
E(io_uring_enter, sys_ret(syscall(SYS_io_uring_enter, -1, 0, 0, 0, NULL, 0)))
E(fanotify_init, sys_ret(syscall(SYS_fanotify_init, 0, 0)))
E(swapon, sys_ret(syscall(SYS_swapon, NOWHERE, 0)))
E(swapoff, sys_ret(syscall(SYS_swapoff, NOWHERE)))
E(reboot, sys_ret(syscall(SYS_reboot, 0, 0, 0, NULL))) /* bad magic: EINVAL, never a reboot */
E(syslog, sys_ret(syscall(SYS_syslog, 10, NULL, 0)))  /* the size of the kernel log */
E(acct, sys_ret(syscall(SYS_acct, NOWHERE "/file")))
E(settimeofday, sys_ret(syscall(SYS_settimeofday, NULL, NULL))) /* sets nothing */
E(clock_settime, sys_ret(syscall(SYS_clock_settime, -1, NULL)))  /* no such clock */
E(clock_adjtime, sys_ret(syscall(SYS_clock_adjtime, CLOCK_REALTIME, &(struct timex){0})))
E(ioperm, sys_ret(syscall(SYS_ioperm, 0x80, 1, 0))) /* turns access off */
E(sysfs, sys_ret(syscall(SYS_sysfs, 3)))
E(move_pages, sys_ret(syscall(SYS_move_pages, 0, 0, NULL, NULL, NULL, 0)))
E(set_mempolicy, sys_ret(syscall(SYS_set_mempolicy, 0, NULL, 0)))
E(personality_no_aslr, sys_ret(syscall(SYS_personality, 0x0040000)))
/* Allowed under the filter. */
E(personality_query, sys_ret(syscall(SYS_personality, 0xffffffff)))
E(personality_linux32, sys_ret(syscall(SYS_personality, 0x8)))
E(clone3, clone3_plain())
E(clone_plain, cloned(syscall(SYS_clone, SIGCHLD, 0, 0, 0, 0)))
E(fork, do_fork())
E(ptrace_traceme, sys_ret(ptrace(PTRACE_TRACEME, 0, NULL, NULL)))
E(process_vm_readv, vm_readv())

#define R(n) {#n, call_##n}
static const struct entry table[] = {
    R(keyctl), R(add_key), R(request_key), R(unshare_user), R(unshare_mount), R(setns),
    R(mount_tmpfs), R(umount2), R(pivot_root), R(open_tree), R(move_mount), R(mount_setattr),
    R(fsopen), R(fsconfig), R(fsmount), R(fspick), R(clone_newnet), R(clone_newuser),
    R(clone_newpid), R(bpf), R(perf_event_open), R(userfaultfd), R(open_by_handle_at),
    R(name_to_handle_at), R(init_module), R(finit_module), R(delete_module), R(kexec_load),
    R(io_uring_setup), R(io_uring_enter), R(fanotify_init), R(swapon), R(swapoff), R(reboot),
    R(syslog), R(acct), R(settimeofday), R(clock_settime), R(clock_adjtime), R(ioperm),
    R(sysfs), R(move_pages), R(set_mempolicy), R(personality_no_aslr), R(personality_query),
    R(personality_linux32), R(clone3), R(clone_plain), R(fork), R(ptrace_traceme),
    R(process_vm_readv),
};

static int run_table(void) {
    for (size_t i = 0; i < sizeof table / sizeof *table; i++) {
        fflush(stdout);
        pid_t pid = fork();
        if (pid == 0) _exit((int)table[i].call());
        int status = 0;
        waitpid(pid, &status, 0);
        printf("%s %d\n", table[i].name, WIFEXITED(status) ? WEXITSTATUS(status) : -1);
    }
    return 0;
}

static int setup_exec(char **argv) {
    if (syscall(SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, NULL) < 0) return perror("join"), 1;
    if (syscall(SYS_add_key, "user", "sbx-probe", SECRET, strlen(SECRET),
                KEY_SPEC_SESSION_KEYRING) < 0)
        return perror("add_key"), 1;
    struct { struct file_handle h; unsigned char bytes[128]; } buf = {.h.handle_bytes = 128};
    int mount_id;
    if (syscall(SYS_name_to_handle_at, AT_FDCWD, "/etc/hostname", &buf.h, &mount_id, 0) < 0)
        return perror("name_to_handle_at"), 1;
    char hex[2 * sizeof buf + 1] = {0};
    size_t len = sizeof buf.h + buf.h.handle_bytes;
    for (size_t i = 0; i < len; i++) sprintf(hex + 2 * i, "%02x", ((unsigned char *)&buf)[i]);
    setenv("SBX_HANDLE", hex, 1);
    execvp(argv[0], argv);
    return perror(argv[0]), 127;
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "setup-exec") == 0) return setup_exec(argv + 2);
    if (argc == 2 && strcmp(argv[1], "table") == 0) return run_table();
    fprintf(stderr, "usage: %s setup-exec CMD... | table\n", argv[0]);
    return 2;
}
