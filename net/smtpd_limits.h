/* smtpd_limits.h - per-client connection count and rate, and AUTH rate limits (anvil style). */
#ifndef HAMR_NET_SMTPD_LIMITS_H
#define HAMR_NET_SMTPD_LIMITS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "net/smtpd.h"

/* The rate window: connections and AUTH commands are counted per 60 s, as anvil's time unit. */
#define SMTPD_LIMITS_WINDOW_MS 60000

/* smtpd_limits_config - what is limited, per client address. */
struct smtpd_limits_config {
    unsigned conn_limit;             /* concurrent connections per address; 0: no limit */
    unsigned conn_rate;              /* attempts per address per window; 0: off */
    unsigned auth_rate;              /* AUTH commands per address per window; 0: off */
    const struct smtpd_cidr *exempt; /* borrowed: addresses never limited nor counted */
    size_t n_exempt;
};

/* smtpd_limits_why - which limit refused a client. */
enum smtpd_limits_why {
    SMTPD_LIMITS_COUNT, /* conn_limit concurrent connections already */
    SMTPD_LIMITS_RATE,  /* more than conn_rate attempts in this window */
};

struct smtpd_limits;

/*
 * smtpd_limits_new - an empty table remembering at most max_entries
 * addresses (at least 1). Limits are off until smtpd_limits_configure().
 * 0 or HAMR_ENOMEM.
 */
int smtpd_limits_new(size_t max_entries, struct smtpd_limits **out);

/* smtpd_limits_free - release the table; returns NULL. NULL is allowed. */
struct smtpd_limits *smtpd_limits_free(struct smtpd_limits *l);

/*
 * smtpd_limits_configure - copy cfg (exempt stays borrowed until the next
 * call or smtpd_limits_free). Connections already admitted keep their count.
 */
void smtpd_limits_configure(struct smtpd_limits *l, const struct smtpd_limits_config *cfg);

/*
 * smtpd_limits_admit - a new connection from addr (an IPv4 or IPv6
 * literal; IPv4-mapped IPv6 counts as IPv4; anything else shares one
 * "unknown" entry) at now_ms. Every attempt counts toward the rate, refused
 * or not, as anvil counts them, so a flood stays refused while it floods.
 * 0: admitted; *held says whether it was counted and must be given back
 * with smtpd_limits_release (false when exempt, limits off, or the table is
 * full of live entries). HAMR_EBUSY: over a limit, *why says which; nothing
 * to release.
 */
int smtpd_limits_admit(struct smtpd_limits *l,
                       const char *addr,
                       uint64_t now_ms,
                       bool *held,
                       enum smtpd_limits_why *why);

/* smtpd_limits_release - a held connection from addr ended at now_ms. */
void smtpd_limits_release(struct smtpd_limits *l, const char *addr, uint64_t now_ms);

/*
 * smtpd_limits_expire - forget addresses with no connection whose window
 * has passed. Admit does this too; exported for the clock hook of tests.
 */
void smtpd_limits_expire(struct smtpd_limits *l, uint64_t now_ms);

/*
 * smtpd_limits_auth - one AUTH command from addr (as for admit) at now_ms,
 * counted in the same entry and window as addr's connection attempts
 * (anvil's smtpd_client_auth_rate_limit). Every command counts, refused or
 * not. 0: go on (also when exempt, auth_rate is off, or there is no room to
 * count it); HAMR_EBUSY: more than auth_rate in this window.
 */
int smtpd_limits_auth(struct smtpd_limits *l, const char *addr, uint64_t now_ms);

/* smtpd_limits_auths - AUTH commands counted for addr in its current window (0 if unknown). */
unsigned smtpd_limits_auths(const struct smtpd_limits *l, const char *addr);

/* smtpd_limits_conns - connections held for addr now (0 if unknown). */
unsigned smtpd_limits_conns(const struct smtpd_limits *l, const char *addr);

/* smtpd_limits_entries - addresses remembered now. */
size_t smtpd_limits_entries(const struct smtpd_limits *l);

#endif
