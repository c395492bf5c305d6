/*
 * privs.h - the daemon's privileges: run in the data directory, drop root
 * to [node] user before anything is opened, keep only the right to bind
 * ports below 1024 until the listeners are up, then no capability at all.
 *
 * Owns: the process's identity switch. May call: libc, the config (read).
 */
#ifndef HAMR_NODE_PRIVS_H
#define HAMR_NODE_PRIVS_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "node/config.h"

/* privs - the account hamrd runs as, resolved from [node] user. */
struct privs {
    bool as_root; /* started with euid 0: privs_drop switches to uid/gid */
    uid_t uid;    /* the account's ids (the current ones when user is "") */
    gid_t gid;
    char name[64]; /* the account's name, for logs ("" when user is "") */
};

/*
 * privs_resolve - look up cfg->user and decide what privs_drop will do.
 * Started as root: user is required and must not be root. Started as
 * another user: user must be empty or name that same account. 0, or
 * HAMR_EPERM / HAMR_ENOTFOUND with a sentence in err naming the config file.
 */
int privs_resolve(const struct hamr_config *cfg, struct privs *p, char *err, size_t errlen);

/*
 * privs_absolute - make every file path in cfg absolute (relative ones are
 * taken against the current directory), because the daemon changes into
 * its data directory. 0 or HAMR_EINVAL (a path too long) with err.
 */
int privs_absolute(struct hamr_config *cfg, char *err, size_t errlen);

/*
 * privs_drop - create the data directory, give it (and what is in it) to
 * the account when started as root, change into it, and switch to the
 * account keeping only CAP_NET_BIND_SERVICE. Afterwards cfg->data_dir is
 * ".". 0 or HAMR_EPERM / HAMR_EIO with err; the caller must exit then.
 */
int privs_drop(const struct privs *p, struct hamr_config *cfg, char *err, size_t errlen);

/*
 * privs_drop_caps - the listeners are bound: give up every capability
 * (including one inherited from a service manager). When started as root
 * this must succeed and root must be unreachable again; otherwise a
 * failure is only logged. 0 or HAMR_EPERM with err.
 */
int privs_drop_caps(const struct privs *p, char *err, size_t errlen);

#endif
