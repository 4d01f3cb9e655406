/*
 * seccomp: writes the local sandboxes' seccomp filter (a compiled classic-BPF program)
 * to the file named by argv[1]. The sandbox's init (sbx-init.c) loads it before anything
 * else runs in the sandbox, so every process of the sandbox runs under it.
 *
 * Built once per source version by providers/local/seccompbin.py:
 *     cc -O2 -Wall -o seccomp-gen seccomp.c -lseccomp      (Debian: libseccomp-dev)
 *
 * The policy follows the default profile container runtimes ship (Docker/containerd):
 * the same system calls are refused, but written as a deny list (default ALLOW) so a
 * system call newer than this list keeps working instead of failing mysteriously.
 * Every refusal is ERRNO(EPERM), never a kill: tools that probe for a feature see
 * "not permitted" and degrade gracefully. The one exception is clone3, refused with
 * ENOSYS: clone3 passes its flags in memory a filter cannot read, and ENOSYS makes
 * glibc (pthread_create, posix_spawn) fall back to clone, whose flags the filter checks.
 *
 * Exit status: 0 written; 1 usage or I/O error; 2 libseccomp refused a rule.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define DENY SCMP_ACT_ERRNO(EPERM)

/* Refused whatever their arguments. Each group says why. */
static const char *const denied[] = {
    /* Kernel keyrings are not namespaced: a sandbox would read and change the keys of
     * the host's root (and of every other sandbox) through the session keyring it
     * inherits. */
    "add_key", "keyctl", "request_key",
    /* Tracing and kernel-programming interfaces: a large, often-exploited attack
     * surface, and perf/bpf read kernel and other processes' data. userfaultfd is the
     * classic tool to widen kernel race windows. */
    "bpf", "perf_event_open", "userfaultfd", "lookup_dcookie",
    /* io_uring reaches most kernel operations outside the reach of this filter (its
     * operations are not system calls) and has been a steady source of kernel bugs. */
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    /* File handles bypass the mount tree: open_by_handle_at opens any inode of a file
     * system a sandbox shares with the host (the "shocker" escape). */
    "open_by_handle_at", "name_to_handle_at",
    /* Loading code into the kernel or replacing it. */
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "create_module", "query_module", "get_kernel_syms",
    /* Changing the mount tree: a sandbox's mounts are set up by the provider; new ones
     * could hide or reveal paths, and the new mount API is recent, little-audited code. */
    "mount", "umount", "umount2", "pivot_root", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    /* New namespaces (user namespaces above all) reopen the kernel surface the dropped
     * capabilities closed: root in a new user namespace holds every capability there.
     * clone is handled separately below (only its namespace flags are refused). */
    "unshare", "setns",
    /* Host-wide state: swap, reboot, the kernel log, the clock, accounting, quotas. */
    "swapon", "swapoff", "reboot", "syslog", "acct", "quotactl", "quotactl_fd",
    "settimeofday", "clock_settime", "clock_adjtime", "stime",
    /* Direct hardware access and legacy x86 modes. */
    "iopl", "ioperm", "vm86", "vm86old",
    /* Obsolete interfaces nothing current uses; kept out as attack surface. */
    "nfsservctl", "sysfs", "_sysctl", "uselib", "ustat",
    /* NUMA placement of memory: can touch other processes' pages (move_pages,
     * migrate_pages) and exhaust nodes; sandboxes have no business with it. */
    "move_pages", "mbind", "set_mempolicy", "migrate_pages",
    /* fanotify watches a whole mount or file system, beyond the sandbox's files. */
    "fanotify_init",
};

/* clone's namespace flags; one rule each, since the conditions of a rule are ANDed and
 * separate rules are ORed. (clone's first argument is the flags on every architecture
 * added here: x86_64, i386, x32, aarch64, arm.) */
static const unsigned long namespace_flags[] = {
    CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER,
    CLONE_NEWPID, CLONE_NEWNET, CLONE_NEWCGROUP,
};

/* personality values Docker allows: Linux (0), PER_LINUX32 (8), UNAME26 (0x20000),
 * both (0x20008), and the 0xffffffff query. Others (ADDR_NO_RANDOMIZE,
 * READ_IMPLIES_EXEC...) weaken exploit mitigations of the processes that follow.
 * libseccomp takes one comparison per argument in a rule and ORs rules, so "none of
 * these values" is written as a union of bit patterns (see add_personality). The kernel
 * reads the argument as an unsigned int: only its low 32 bits are compared. */
#define PERSONALITY_BITS 0x20008ul /* every allowed value but the query is made of these */
#define BIT31 0x80000000ul
/* Adds one rule; unknown names are skipped (a name unknown to libseccomp, or one that
 * exists on no architecture in the filter, leaves nothing to refuse). */
static int add(scmp_filter_ctx ctx, uint32_t action, const char *name, unsigned count,
               const struct scmp_arg_cmp *args) {
    int nr = seccomp_syscall_resolve_name(name);
    if (nr == __NR_SCMP_ERROR) {
        fprintf(stderr, "seccomp: %s unknown to this libseccomp, not filtered\n", name);
        return 0;
    }
    /* A name with no number on the native architecture resolves to a negative
     * "pseudo" number; libseccomp then adds the rule only where the call exists
     * (vm86 on i386, for example). */
    int rc = seccomp_rule_add_array(ctx, action, nr, count, args);
    if (rc != 0) fprintf(stderr, "seccomp: rule for %s: %s\n", name, strerror(-rc));
    return rc;
}

/* A value is refused when it has a bit outside PERSONALITY_BITS and is not 0xffffffff:
 *  - bit 31 clear (so not 0xffffffff): refused if any other bit outside the set is set;
 *  - bit 31 set (outside the set): refused unless every bit is set, i.e. if any is clear.
 * 29 + 31 rules, each one masked comparison; they only lengthen personality's path. */
static int add_personality(scmp_filter_ctx ctx) {
    int rc = 0;
    for (unsigned b = 0; b < 31; b++) {
        unsigned long bit = 1ul << b;
        struct scmp_arg_cmp set = SCMP_A0(SCMP_CMP_MASKED_EQ, BIT31 | bit, bit);
        struct scmp_arg_cmp clear = SCMP_A0(SCMP_CMP_MASKED_EQ, BIT31 | bit, BIT31);
        if (!(bit & PERSONALITY_BITS)) rc |= add(ctx, DENY, "personality", 1, &set);
        rc |= add(ctx, DENY, "personality", 1, &clear);
    }
    return rc;
}

static int add_rules(scmp_filter_ctx ctx) {
    int rc = 0;
    for (size_t i = 0; i < sizeof denied / sizeof *denied; i++)
        rc |= add(ctx, DENY, denied[i], 0, NULL);
    for (size_t i = 0; i < sizeof namespace_flags / sizeof *namespace_flags; i++) {
        struct scmp_arg_cmp flag = SCMP_A0(SCMP_CMP_MASKED_EQ, namespace_flags[i],
                                           namespace_flags[i]);
        rc |= add(ctx, DENY, "clone", 1, &flag);
    }
    rc |= add_personality(ctx);
    rc |= add(ctx, SCMP_ACT_ERRNO(ENOSYS), "clone3", 0, NULL);
    return rc;
}

/* The 32-bit ABIs this kernel can also run: a process could switch to one (int 0x80,
 * an i386 or arm binary) to reach the same calls under other numbers, so each gets the
 * same rules. Any other architecture is refused outright (bad-arch action). */
static int add_architectures(scmp_filter_ctx ctx) {
    int rc = seccomp_attr_set(ctx, SCMP_FLTATR_ACT_BADARCH, DENY);
#if defined(__x86_64__)
    rc |= seccomp_arch_add(ctx, SCMP_ARCH_X86);
    rc |= seccomp_arch_add(ctx, SCMP_ARCH_X32);
#elif defined(__aarch64__)
    rc |= seccomp_arch_add(ctx, SCMP_ARCH_ARM);
#endif
    return rc;
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s OUTPUT.bpf\n", argv[0]);
        return 1;
    }
    scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
    if (ctx == NULL) {
        fprintf(stderr, "seccomp: seccomp_init failed\n");
        return 2;
    }
    if (add_architectures(ctx) != 0 || add_rules(ctx) != 0) {
        seccomp_release(ctx);
        return 2;
    }
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        fprintf(stderr, "seccomp: %s: %s\n", argv[1], strerror(errno));
        seccomp_release(ctx);
        return 1;
    }
    int rc = seccomp_export_bpf(ctx, fd);
    seccomp_release(ctx);
    if (rc != 0 || close(fd) != 0) {
        fprintf(stderr, "seccomp: writing %s failed: %s\n", argv[1], strerror(rc ? -rc : errno));
        return 1;
    }
    return 0;
}
