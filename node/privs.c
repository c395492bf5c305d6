/*
 * privs.c - how hamrd gives up root (Postfix's mail_owner, OpenSMTPD's
 * _smtpd user, with libuv's single process).
 *
 * Started as root, hamrd must be told an account ([node] user) and never
 * runs as root past privs_drop: it creates the data directory, hands it
 * to the account, changes into it (so the directories above it need not be
 * open to the account), sets the account's groups, gid and uid, and keeps
 * only CAP_NET_BIND_SERVICE so that a listener on port 25 can still be
 * bound. Nothing is opened as root: raft's files, snapshots and every file
 * read later (certificates, credentials) are opened by the account, so a
 * SIGHUP reload reads exactly what the start read. Once the relay has bound
 * its listeners, privs_drop_caps removes that last capability and checks
 * that uid 0 cannot be regained.
 *
 * Started as any other user (a systemd unit with User=), nothing changes
 * hands; the data directory is still where hamrd runs, and a capability the
 * service manager passed on is dropped once the listeners are bound.
 */
#include "node/privs.h"

#include <errno.h>
#include <ftw.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/log.h"

/* privs_set_caps - effective and permitted capability sets to caps (bits of the first word). */
static int privs_set_caps(uint32_t caps)
{
    struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
    struct __user_cap_data_struct data[_LINUX_CAPABILITY_U32S_3];
    memset(data, 0, sizeof(data));
    data[0].effective = caps;
    data[0].permitted = caps;
    return syscall(SYS_capset, &hdr, data) == 0 ? 0 : -errno;
}

/* privs_resolve - look up [node] user; see privs.h. */
int privs_resolve(const struct hamr_config *cfg, struct privs *p, char *err, size_t errlen)
{
    memset(p, 0, sizeof(*p));
    p->as_root = geteuid() == 0;
    p->uid = geteuid();
    p->gid = getegid();
    if (cfg->user[0] == '\0') {
        if (p->as_root) {
            snprintf(err, errlen,
                     "%s: refusing to run as root: set [node] user to the unprivileged "
                     "account hamrd should run as",
                     cfg->path);
            return HAMR_EPERM;
        }
        return 0;
    }
    errno = 0;
    struct passwd *pw = getpwnam(cfg->user);
    if (pw == NULL) {
        snprintf(err, errlen, "%s: [node] user: no such user \"%s\"", cfg->path, cfg->user);
        return HAMR_ENOTFOUND;
    }
    if (pw->pw_uid == 0) {
        snprintf(err, errlen, "%s: [node] user: \"%s\" is root; name an unprivileged account",
                 cfg->path, cfg->user);
        return HAMR_EINVAL;
    }
    if (!p->as_root && pw->pw_uid != geteuid()) {
        snprintf(err, errlen,
                 "%s: [node] user is \"%s\" but hamrd runs as uid %lu: only root can switch "
                 "users (start it as root or as \"%s\")",
                 cfg->path, cfg->user, (unsigned long)geteuid(), cfg->user);
        return HAMR_EPERM;
    }
    p->uid = pw->pw_uid;
    p->gid = pw->pw_gid;
    hamr_strlcpy(p->name, pw->pw_name, sizeof(p->name));
    return 0;
}

/* privs_absolute_one - path made absolute against cwd, in place (size bytes). */
static int privs_absolute_one(char *path, size_t size, const char *cwd, char *err, size_t errlen)
{
    if (path[0] == '\0' || path[0] == '/')
        return 0;
    char abs[4096];
    int n = snprintf(abs, sizeof(abs), "%s/%s", cwd, path);
    if (n < 0 || (size_t)n >= sizeof(abs) || (size_t)n >= size) {
        snprintf(err, errlen, "path too long once made absolute: %s/%s", cwd, path);
        return HAMR_EINVAL;
    }
    memcpy(path, abs, (size_t)n + 1);
    return 0;
}

/* privs_absolute - every configured file path made absolute; see privs.h. */
int privs_absolute(struct hamr_config *cfg, char *err, size_t errlen)
{
    char cwd[4096];
    if (getcwd(cwd, sizeof(cwd)) == NULL) {
        snprintf(err, errlen, "getcwd: %s", strerror(errno));
        return HAMR_EIO;
    }
    struct {
        char *path;
        size_t size;
    } paths[] = {
        {cfg->data_dir, sizeof(cfg->data_dir)},
        {cfg->tls_cert_file, sizeof(cfg->tls_cert_file)},
        {cfg->tls_key_file, sizeof(cfg->tls_key_file)},
        {cfg->auth_file, sizeof(cfg->auth_file)},
        {cfg->smtpc.tls_ca_file, sizeof(cfg->smtpc.tls_ca_file)},
        {cfg->relay_recipients, sizeof(cfg->relay_recipients)},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(paths); i++) {
        int rv = privs_absolute_one(paths[i].path, paths[i].size, cwd, err, errlen);
        if (rv != 0)
            return rv;
    }
    for (size_t i = 0; i < cfg->n_dkim_keys; i++) {
        int rv = privs_absolute_one(cfg->dkim_keys[i].path, sizeof(cfg->dkim_keys[i].path), cwd,
                                    err, errlen);
        if (rv != 0)
            return rv;
    }
    return 0;
}

/* The account nftw hands files to (nftw's callback takes no argument). */
static uid_t privs_chown_uid;
static gid_t privs_chown_gid;
static int privs_chown_errno;

/* privs_chown_one - one entry of the data directory to the account; symlinks themselves only. */
static int privs_chown_one(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
    (void)type;
    (void)ftw;
    if (st->st_uid == privs_chown_uid && st->st_gid == privs_chown_gid)
        return 0;
    if (lchown(path, privs_chown_uid, privs_chown_gid) != 0) {
        privs_chown_errno = errno;
        return 1;
    }
    return 0;
}

/* privs_switch - groups, gid, uid to the account, keeping CAP_NET_BIND_SERVICE. */
static int privs_switch(const struct privs *p, char *err, size_t errlen)
{
    if (prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) != 0 || setgroups(1, &p->gid) != 0 ||
        setgid(p->gid) != 0 || setuid(p->uid) != 0) {
        snprintf(err, errlen, "cannot switch to user \"%s\" (uid %lu gid %lu): %s", p->name,
                 (unsigned long)p->uid, (unsigned long)p->gid, strerror(errno));
        return HAMR_EPERM;
    }
    (void)prctl(PR_SET_KEEPCAPS, 0L, 0L, 0L, 0L);
    int rv = privs_set_caps(1u << CAP_NET_BIND_SERVICE);
    if (rv != 0) {
        snprintf(err, errlen, "cannot keep CAP_NET_BIND_SERVICE: %s", strerror(-rv));
        return HAMR_EPERM;
    }
#if defined(__SANITIZE_ADDRESS__)
    /* A uid change makes the process non-dumpable, and LeakSanitizer's exit
     * check must trace the process's own threads: sanitizer builds only. */
    (void)prctl(PR_SET_DUMPABLE, 1L, 0L, 0L, 0L);
#endif
    return 0;
}

/* privs_drop - into the data directory as the account; see privs.h. */
int privs_drop(const struct privs *p, struct hamr_config *cfg, char *err, size_t errlen)
{
    int rv = fs_mkdirs(cfg->data_dir, 0750, err, errlen);
    if (rv != 0)
        return rv;
    if (p->as_root) {
        privs_chown_uid = p->uid;
        privs_chown_gid = p->gid;
        privs_chown_errno = 0;
        if (nftw(cfg->data_dir, privs_chown_one, 16, FTW_PHYS | FTW_MOUNT) != 0) {
            snprintf(err, errlen, "data directory %s: cannot give it to user \"%s\": %s",
                     cfg->data_dir, p->name,
                     strerror(privs_chown_errno ? privs_chown_errno : errno));
            return HAMR_EPERM;
        }
    }
    if (chdir(cfg->data_dir) != 0) {
        snprintf(err, errlen, "data directory %s: %s", cfg->data_dir, strerror(errno));
        return HAMR_EIO;
    }
    log_info("data_dir=%s user=%s uid=%lu gid=%lu", cfg->data_dir,
             p->name[0] ? p->name : "(current)", (unsigned long)p->uid, (unsigned long)p->gid);
    hamr_strlcpy(cfg->data_dir, ".", sizeof(cfg->data_dir));
    if (!p->as_root)
        return 0;
    return privs_switch(p, err, errlen);
}

/* privs_drop_caps - no capability left; see privs.h. */
int privs_drop_caps(const struct privs *p, char *err, size_t errlen)
{
    int rv = privs_set_caps(0);
    if (rv != 0 && p->as_root) {
        snprintf(err, errlen, "cannot drop capabilities: %s", strerror(-rv));
        return HAMR_EPERM;
    }
    if (rv != 0)
        log_warn("capabilities not dropped: %s", strerror(-rv));
    /* Nothing hamrd could exec may gain privileges either. */
    (void)prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L);
    if (p->as_root && (setuid(0) == 0 || seteuid(0) == 0)) {
        snprintf(err, errlen, "root could be regained after dropping privileges");
        return HAMR_EPERM;
    }
    return 0;
}
