/* smtpd_auth.h - SMTP AUTH credentials: the credentials file, password hashing and checking. */
#ifndef HAMR_NET_SMTPD_AUTH_H
#define HAMR_NET_SMTPD_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/*
 * The credentials file holds one line per user:
 *
 *   user:$pbkdf2-sha256$ITERATIONS$SALT_B64$HASH_B64
 *
 * PBKDF2-HMAC-SHA256 (RFC 8018), a 32-octet hash, standard base64 with
 * padding. Blank lines and lines whose first non-blank octet is '#' are
 * ignored. A user name is 1..SMTPD_AUTH_USER_MAX octets, none of them a
 * control octet, a space or ':'.
 */
#define SMTPD_AUTH_SCHEME "$pbkdf2-sha256$"
#define SMTPD_AUTH_ITERATIONS 100000 /* default for new hashes */
#define SMTPD_AUTH_ITERATIONS_MIN 1000
#define SMTPD_AUTH_ITERATIONS_MAX 10000000
#define SMTPD_AUTH_SALT_LEN 16 /* random octets in a new hash */
#define SMTPD_AUTH_HASH_LEN 32
#define SMTPD_AUTH_USER_MAX 255
#define SMTPD_AUTH_PASS_MAX 1024 /* longer passwords never match */
#define SMTPD_AUTH_LINE_MAX 1024 /* octets of a credentials line */
#define SMTPD_AUTH_USERS_MAX 100000

struct smtpd_auth;

/*
 * smtpd_auth_new - load the credentials file at path (copied, kept for
 * smtpd_auth_reload). On failure returns HAMR_EIO (cannot read) or
 * HAMR_EINVAL (bad content) with "PATH:LINE: reason" in errmsg (LINE 0 for
 * a whole-file problem), HAMR_ENOMEM.
 */
int smtpd_auth_new(const char *path, struct smtpd_auth **out, char *errmsg, size_t errlen);

/*
 * smtpd_auth_reload - read the file again (SIGHUP). On success the new
 * table replaces the old one at once; on failure the old table stays,
 * errmsg says why (as smtpd_auth_new) and the code is returned.
 */
int smtpd_auth_reload(struct smtpd_auth *a, char *errmsg, size_t errlen);

/* smtpd_auth_free - release the table (held references keep it until put). Returns NULL. */
struct smtpd_auth *smtpd_auth_free(struct smtpd_auth *a);

/* smtpd_auth_users - how many users the table holds. */
size_t smtpd_auth_users(const struct smtpd_auth *a);

/*
 * smtpd_auth_iterations - the PBKDF2 iterations a check of user runs: the
 * user's own, or for an unknown user those of the stand-in entry (the
 * table's highest), so that the time of a failure does not tell whether the
 * user exists.
 */
unsigned smtpd_auth_iterations(const struct smtpd_auth *a, const char *user, size_t user_len);

/*
 * smtpd_auth_verify - is pass (pass_len octets) the password of user
 * (user_len octets)? Both are borrowed for the call. 0 if so, HAMR_EPERM
 * otherwise. An unknown user costs one PBKDF2 run against a dummy hash as
 * well, so the time taken does not tell whether the user exists; hashes
 * are compared with CRYPTO_memcmp. Runs PBKDF2 on the calling thread.
 */
int smtpd_auth_verify(const struct smtpd_auth *a,
                      const char *user,
                      size_t user_len,
                      const char *pass,
                      size_t pass_len);

/*
 * struct smtpd_auth_table - one read of the credentials file, reference
 * counted so a check can run on a worker thread while a reload swaps in a
 * newer table on the loop thread.
 */
struct smtpd_auth_table;

/*
 * smtpd_auth_table_get - a reference to the table current now (on the
 * thread that reloads). Give it back with smtpd_auth_table_put().
 */
struct smtpd_auth_table *smtpd_auth_table_get(const struct smtpd_auth *a);

/* smtpd_auth_table_put - drop a reference, on any thread; the last one frees the table. */
void smtpd_auth_table_put(struct smtpd_auth_table *t);

/*
 * smtpd_auth_table_verify - smtpd_auth_verify against a held table; safe on
 * any thread (the table is not changed). 0 or HAMR_EPERM.
 */
int smtpd_auth_table_verify(const struct smtpd_auth_table *t,
                            const char *user,
                            size_t user_len,
                            const char *pass,
                            size_t pass_len);

/*
 * smtpd_auth_hash_line - a credentials line (no newline) for user and pass
 * with a fresh random salt, written NUL-terminated into out. HAMR_EINVAL for
 * a user name the file cannot hold or iterations out of range, HAMR_ETOOBIG
 * if out is too small, HAMR_EIO if no random octets could be had.
 */
int smtpd_auth_hash_line(const char *user,
                         const char *pass,
                         size_t pass_len,
                         unsigned iterations,
                         char *out,
                         size_t outlen);

/* smtpd_auth_user_ok - may name (len octets) be a user name in the file? */
bool smtpd_auth_user_ok(const char *name, size_t len);

/*
 * smtpd_auth_b64_decode - b64_decode (util/b64.h): strict standard base64
 * (RFC 4648 section 4, with padding, no white space) of in[0..len) into
 * out (room for outlen). The decoded length goes to *n. HAMR_EINVAL for
 * anything malformed, HAMR_ETOOBIG if out is too small. Safe on any
 * untrusted input.
 */
int smtpd_auth_b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen, size_t *n);

/*
 * smtpd_auth_b64_encode - b64_encode (util/b64.h): standard base64 of
 * in[0..len) into out, NUL-terminated. HAMR_ETOOBIG if out (outlen) is too
 * small.
 */
int smtpd_auth_b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen);

#endif
