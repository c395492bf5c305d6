/* smtpd_rcptmap.h - the relay recipient map: which addresses at our relay domains exist. */
#ifndef HAMR_NET_SMTPD_RCPTMAP_H
#define HAMR_NET_SMTPD_RCPTMAP_H

#include <stddef.h>

#include "net/smtp_addr.h"

/*
 * The file ([smtpd] relay_recipients) holds one entry per line:
 *
 *   user@example.com     this address exists
 *   @example.org         every address at example.org exists
 *
 * Blank lines and lines whose first non-blank octet is '#' are ignored;
 * white space at the end of a line (and a CR before the LF) is dropped.
 * An entry is printable ASCII or well-formed UTF-8 (RFC 6531 addresses)
 * with no space, at most SMTPD_RCPTMAP_ENTRY_MAX octets (RFC 5321
 * 4.5.3.1.3: a path is 256 octets with its <>). The local part is a
 * dot-atom (RFC 5322 3.2.3, RFC 6532 3.2) of at most 64 octets, the domain
 * a dot-separated list of letters, digits, '-' and UTF-8 (U-labels, taken
 * as they are: no IDNA). Both halves compare without regard to ASCII case,
 * as Postfix does by default; UTF-8 compares octet for octet. A wildcard covers
 * exactly its domain, not subdomains. Entries listed twice count once.
 */
#define SMTPD_RCPTMAP_ENTRY_MAX (SMTP_ADDR_PATH_MAX - 2) /* 254 */
#define SMTPD_RCPTMAP_LOCAL_MAX SMTP_ADDR_LOCAL_MAX
#define SMTPD_RCPTMAP_LINE_MAX 1024        /* octets of a line, comments included */
#define SMTPD_RCPTMAP_ENTRIES_MAX 1000000  /* entry lines in one file */
#define SMTPD_RCPTMAP_FILE_MAX (64u << 20) /* octets of one file */

struct smtpd_rcptmap;

/*
 * smtpd_rcptmap_new - load the file at path (copied, kept for
 * smtpd_rcptmap_reload). On failure returns HAMR_EIO (cannot read) or
 * HAMR_EINVAL (bad content, too big) with "PATH:LINE: reason" in errmsg
 * (LINE 0 for a whole-file problem), or HAMR_ENOMEM.
 */
int smtpd_rcptmap_new(const char *path, struct smtpd_rcptmap **out, char *errmsg, size_t errlen);

/*
 * smtpd_rcptmap_reload - read the file again (SIGHUP). On success the new
 * table replaces the old one at once; on failure the old table stays, the
 * failure is logged, errmsg says why (as smtpd_rcptmap_new) and the code is
 * returned.
 */
int smtpd_rcptmap_reload(struct smtpd_rcptmap *m, char *errmsg, size_t errlen);

/* smtpd_rcptmap_free - release the map (held table references keep their table). Returns NULL. */
struct smtpd_rcptmap *smtpd_rcptmap_free(struct smtpd_rcptmap *m);

/* smtpd_rcptmap_entries - how many distinct entries the current table holds. */
size_t smtpd_rcptmap_entries(const struct smtpd_rcptmap *m);

/*
 * smtpd_rcptmap_lookup - does addr ("local@domain" as the SMTP server
 * parsed it: no <>, no source route; borrowed for the call) exist? 0 if the
 * address or its "@domain" is listed, HAMR_ENOTFOUND otherwise (also for
 * anything that is not local@domain or is too long). A quoted local part
 * is looked up without its quotes. No allocation; safe on untrusted input.
 */
int smtpd_rcptmap_lookup(const struct smtpd_rcptmap *m, const char *addr);

/*
 * struct smtpd_rcptmap_table - one read of the file, reference counted, so
 * that whoever needs the answers to stay the same across a reload (or to
 * look up on another thread) can hold one.
 */
struct smtpd_rcptmap_table;

/* smtpd_rcptmap_table_get - a reference to the table current now. Give it back with _put. */
struct smtpd_rcptmap_table *smtpd_rcptmap_table_get(const struct smtpd_rcptmap *m);

/* smtpd_rcptmap_table_put - drop a reference (NULL: nothing); the last one frees the table. */
void smtpd_rcptmap_table_put(struct smtpd_rcptmap_table *t);

/* smtpd_rcptmap_table_lookup - smtpd_rcptmap_lookup against a held table. */
int smtpd_rcptmap_table_lookup(const struct smtpd_rcptmap_table *t, const char *addr);

#endif
