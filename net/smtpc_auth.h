/* smtpc_auth.h - the outbound SMTP AUTH credentials file: one user and password per next hop. */
#ifndef HAMR_NET_SMTPC_AUTH_H
#define HAMR_NET_SMTPC_AUTH_H

#include <stddef.h>

/*
 * The file ([delivery] auth_file; Postfix's smtp_sasl_password_maps as a
 * flat file) holds one line per next hop:
 *
 *   NEXTHOP USER:PASSWORD
 *
 * NEXTHOP is the destination key as hamr writes it for a delivery:
 * "[host]:port" for a relayhost or transport written in brackets (the
 * host's own addresses), "domain:port" for one looked up as MX. The port
 * is required; the host is compared without regard to ASCII case. One or
 * more spaces or tabs follow it. USER is 1..SMTPC_AUTH_USER_MAX octets
 * without a control octet, a space or ':'; PASSWORD is everything after
 * the first ':' to the end of the line (white space at the end is
 * dropped), 1..SMTPC_AUTH_PASS_MAX octets without a control octet. Blank
 * lines and lines whose first non-blank octet is '#' are ignored; a next
 * hop listed twice is an error. The file must not be readable or writable
 * by others (mode o-rwx), as it holds passwords in the clear.
 */
#define SMTPC_AUTH_USER_MAX 255
#define SMTPC_AUTH_PASS_MAX 255
#define SMTPC_AUTH_LINE_MAX 1024
#define SMTPC_AUTH_ENTRIES_MAX 10000

struct smtpc_auth;

/*
 * smtpc_auth_new - load the file at path (copied, kept for reload). 0; or
 * HAMR_EIO (cannot read), HAMR_EPERM (readable or writable by others),
 * HAMR_EINVAL (a bad line), HAMR_ENOMEM, with "PATH:LINE: reason" in
 * errmsg (LINE 0 for a whole-file problem). No password is ever in errmsg.
 */
int smtpc_auth_new(const char *path, struct smtpc_auth **out, char *errmsg, size_t errlen);

/*
 * smtpc_auth_reload - read the file again (SIGHUP). On success the new
 * table replaces the old one, and what lookups returned before is no
 * longer valid; on failure the old table stays and errmsg says why.
 */
int smtpc_auth_reload(struct smtpc_auth *a, char *errmsg, size_t errlen);

/* smtpc_auth_free - release everything, passwords wiped. Returns NULL. */
struct smtpc_auth *smtpc_auth_free(struct smtpc_auth *a);

/* smtpc_auth_count - how many next hops the table holds. */
size_t smtpc_auth_count(const struct smtpc_auth *a);

/*
 * smtpc_auth_lookup - the user and password for nexthop (a destination key,
 * borrowed for the call). 0 with *user and *pass pointing into the table
 * (valid until the next reload or free), or HAMR_ENOTFOUND.
 */
int smtpc_auth_lookup(const struct smtpc_auth *a,
                      const char *nexthop,
                      const char **user,
                      const char **pass);

#endif
