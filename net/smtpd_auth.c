/*
 * smtpd_auth.c - the credentials table behind SMTP AUTH (RFC 4954).
 *
 * Owns: the table loaded from the credentials file (user names, salts,
 * hashes) and a copy of the file's path. A reload builds a whole new table
 * and swaps it in only when the file was read without error.
 *
 * Errors: loading names the file and the line ("PATH:LINE: reason");
 * verification answers only yes (0) or no (HAMR_EPERM).
 *
 * Security: the file is operator input, but every line is bounded and
 * checked. Passwords come from the network: they are never logged, never
 * copied beyond the PBKDF2 call, and the derived key is wiped after use.
 * An unknown user runs PBKDF2 against a dummy entry with the table's
 * highest iteration count, and hashes are compared with CRYPTO_memcmp, so
 * neither the answer's time nor its content tells whether a user exists
 * (SECURITY.md S16). PBKDF2 runs on the calling thread.
 *
 * Threads: a table is reference-counted (atomically). smtpd_auth_table_get
 * lets a check run on another thread against the table current when it was
 * queued; a reload swaps in a new table and the old one lives until the
 * last check holding it lets go. Loading, reloading and freeing stay on one
 * thread (the loop's); only smtpd_auth_table_verify and _put run elsewhere.
 */
#include <errno.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "util/b64.h"
#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/log.h"
#include "net/smtpd_auth.h"

/* smtpd_auth_entry - one user of the table. */
struct smtpd_auth_entry {
    char user[SMTPD_AUTH_USER_MAX + 1];
    size_t user_len;
    unsigned iterations;
    uint8_t salt[64];
    size_t salt_len;
    uint8_t hash[SMTPD_AUTH_HASH_LEN];
};

/* smtpd_auth_table - everything one read of the file produced. */
struct smtpd_auth_table {
    atomic_uint refs; /* the owning smtpd_auth, plus one per check in flight */
    struct smtpd_auth_entry *entries;
    size_t n, cap;
    struct smtpd_auth_entry dummy; /* for unknown users */
};

struct smtpd_auth {
    char path[4096];
    struct smtpd_auth_table *table; /* the current table; never NULL */
};

/* ------------------------------------------------------------------ */
/* base64 (RFC 4648 section 4): util/b64, under this module's names     */
/* ------------------------------------------------------------------ */

/* smtpd_auth_b64_decode - b64_decode. */
int smtpd_auth_b64_decode(const char *in, size_t len, uint8_t *out, size_t outlen, size_t *n)
{
    return b64_decode(in, len, out, outlen, n);
}

/* smtpd_auth_b64_encode - b64_encode. */
int smtpd_auth_b64_encode(const uint8_t *in, size_t len, char *out, size_t outlen)
{
    return b64_encode(in, len, out, outlen);
}

/* ------------------------------------------------------------------ */
/* Hashing                                                              */
/* ------------------------------------------------------------------ */

/* smtpd_auth_pbkdf2 - PBKDF2-HMAC-SHA256 into out (SMTPD_AUTH_HASH_LEN). 0 or HAMR_EIO. */
static int smtpd_auth_pbkdf2(const char *pass,
                             size_t pass_len,
                             const uint8_t *salt,
                             size_t salt_len,
                             unsigned iterations,
                             uint8_t *out)
{
    if (PKCS5_PBKDF2_HMAC(pass, (int)pass_len, salt, (int)salt_len, (int)iterations, EVP_sha256(),
                          SMTPD_AUTH_HASH_LEN, out) != 1)
        return HAMR_EIO;
    return 0;
}

/* smtpd_auth_user_ok - 1..255 octets, no control octet, space or ':'. */
bool smtpd_auth_user_ok(const char *name, size_t len)
{
    if (len == 0 || len > SMTPD_AUTH_USER_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)name[i];
        if (c <= ' ' || c == 0x7f || c == ':')
            return false;
    }
    return true;
}

/* smtpd_auth_hash_line - "user:$pbkdf2-sha256$ITER$SALT$HASH" with a fresh salt. */
int smtpd_auth_hash_line(const char *user,
                         const char *pass,
                         size_t pass_len,
                         unsigned iterations,
                         char *out,
                         size_t outlen)
{
    uint8_t salt[SMTPD_AUTH_SALT_LEN], hash[SMTPD_AUTH_HASH_LEN];
    char salt64[32], hash64[64];
    int rc;

    if (!smtpd_auth_user_ok(user, strlen(user)) || iterations < SMTPD_AUTH_ITERATIONS_MIN ||
        iterations > SMTPD_AUTH_ITERATIONS_MAX || pass_len > SMTPD_AUTH_PASS_MAX)
        return HAMR_EINVAL;
    if (RAND_bytes(salt, sizeof(salt)) != 1)
        return HAMR_EIO;
    rc = smtpd_auth_pbkdf2(pass, pass_len, salt, sizeof(salt), iterations, hash);
    if (rc != 0)
        return rc;
    smtpd_auth_b64_encode(salt, sizeof(salt), salt64, sizeof(salt64));
    smtpd_auth_b64_encode(hash, sizeof(hash), hash64, sizeof(hash64));
    OPENSSL_cleanse(hash, sizeof(hash));
    int n =
        snprintf(out, outlen, "%s:" SMTPD_AUTH_SCHEME "%u$%s$%s", user, iterations, salt64, hash64);
    if (n < 0 || (size_t)n >= outlen)
        return HAMR_ETOOBIG;
    return 0;
}

/* ------------------------------------------------------------------ */
/* The file                                                             */
/* ------------------------------------------------------------------ */

/* smtpd_auth_table_free - release a table's entries. */
static void smtpd_auth_table_free(struct smtpd_auth_table *t)
{
    if (t->entries != NULL)
        OPENSSL_cleanse(t->entries, t->cap * sizeof(*t->entries));
    free(t->entries);
    t->entries = NULL; /* refs stays: the table itself is freed by _put */
    t->n = 0;
    t->cap = 0;
}

/* smtpd_auth_table_new - an empty table on the heap with one reference, or NULL. */
static struct smtpd_auth_table *smtpd_auth_table_new(void)
{
    struct smtpd_auth_table *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    atomic_init(&t->refs, 1);
    return t;
}

/* smtpd_auth_table_get - one more reference to the current table. */
struct smtpd_auth_table *smtpd_auth_table_get(const struct smtpd_auth *a)
{
    atomic_fetch_add(&a->table->refs, 1);
    return a->table;
}

/* smtpd_auth_table_put - drop a reference; the last one frees the table. */
void smtpd_auth_table_put(struct smtpd_auth_table *t)
{
    if (t == NULL)
        return;
    if (atomic_fetch_sub(&t->refs, 1) != 1)
        return;
    smtpd_auth_table_free(t);
    OPENSSL_cleanse(&t->dummy, sizeof(t->dummy));
    free(t);
}

/* smtpd_auth_find - the entry of user, or NULL. */
static const struct smtpd_auth_entry *smtpd_auth_find(const struct smtpd_auth_table *t,
                                                      const char *user,
                                                      size_t len)
{
    for (size_t i = 0; i < t->n; i++)
        if (t->entries[i].user_len == len && memcmp(t->entries[i].user, user, len) == 0)
            return &t->entries[i];
    return NULL;
}

/*
 * smtpd_auth_parse_line - one non-comment line (NUL-terminated, no
 * newline) into e. Returns NULL or a reason for the error message.
 */
static const char *smtpd_auth_parse_line(char *line, struct smtpd_auth_entry *e)
{
    char *colon = strchr(line, ':');
    size_t n;

    memset(e, 0, sizeof(*e));
    if (colon == NULL)
        return "expected user:" SMTPD_AUTH_SCHEME "ITERATIONS$SALT$HASH";
    if (!smtpd_auth_user_ok(line, (size_t)(colon - line)))
        return "bad user name (1-255 octets, no space, control character or ':')";
    e->user_len = (size_t)(colon - line);
    memcpy(e->user, line, e->user_len);
    char *p = colon + 1;
    if (strncmp(p, SMTPD_AUTH_SCHEME, strlen(SMTPD_AUTH_SCHEME)) != 0)
        return "unknown hash scheme (want " SMTPD_AUTH_SCHEME ")";
    p += strlen(SMTPD_AUTH_SCHEME);
    /* ITERATIONS */
    unsigned long long iter = 0;
    size_t digits = 0;
    while (*p >= '0' && *p <= '9' && digits < 9) {
        iter = iter * 10 + (unsigned long long)(*p - '0');
        p++;
        digits++;
    }
    if (digits == 0 || *p != '$')
        return "bad iteration count";
    if (iter < SMTPD_AUTH_ITERATIONS_MIN || iter > SMTPD_AUTH_ITERATIONS_MAX)
        return "iteration count out of range (1000-10000000)";
    e->iterations = (unsigned)iter;
    p++;
    /* SALT_B64 */
    char *dollar = strchr(p, '$');
    if (dollar == NULL)
        return "missing hash";
    if (smtpd_auth_b64_decode(p, (size_t)(dollar - p), e->salt, sizeof(e->salt), &n) != 0 || n < 8)
        return "bad salt (base64 of 8 to 64 octets)";
    e->salt_len = n;
    /* HASH_B64 */
    p = dollar + 1;
    uint8_t hash[SMTPD_AUTH_HASH_LEN + 3];
    if (smtpd_auth_b64_decode(p, strlen(p), hash, sizeof(hash), &n) != 0 ||
        n != SMTPD_AUTH_HASH_LEN)
        return "bad hash (base64 of 32 octets)";
    memcpy(e->hash, hash, SMTPD_AUTH_HASH_LEN);
    return NULL;
}

/* smtpd_auth_table_add - append e (copied). HAMR_ENOMEM. */
static int smtpd_auth_table_add(struct smtpd_auth_table *t, const struct smtpd_auth_entry *e)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        struct smtpd_auth_entry *p = realloc(t->entries, cap * sizeof(*p));
        if (p == NULL)
            return HAMR_ENOMEM;
        t->entries = p;
        t->cap = cap;
    }
    t->entries[t->n++] = *e;
    return 0;
}

/*
 * smtpd_auth_load - read path into t (empty on entry). On error t is
 * released and errmsg holds "PATH:LINE: reason".
 */
static int smtpd_auth_load(const char *path,
                           struct smtpd_auth_table *t,
                           char *errmsg,
                           size_t errlen)
{
    char line[SMTPD_AUTH_LINE_MAX + 2];
    unsigned lineno = 0;
    int rc = 0;

    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int e = errno;
        snprintf(errmsg, errlen, "%s:0: %s", path, strerror(e));
        return HAMR_EIO;
    }
    for (;;) {
        char *start = NULL;
        int got = fs_table_line(f, path, line, sizeof(line), &lineno, &start, errmsg, errlen);
        if (got <= 0) {
            rc = got; /* 0 at the end of the file */
            break;
        }
        if (start != line) {
            snprintf(errmsg, errlen, "%s:%u: line starts with white space", path, lineno);
            rc = HAMR_EINVAL;
            break;
        }
        struct smtpd_auth_entry e;
        const char *why = smtpd_auth_parse_line(line, &e);
        OPENSSL_cleanse(line, sizeof(line));
        if (why != NULL) {
            snprintf(errmsg, errlen, "%s:%u: %s", path, lineno, why);
            rc = HAMR_EINVAL;
            break;
        }
        if (smtpd_auth_find(t, e.user, e.user_len) != NULL) {
            snprintf(errmsg, errlen, "%s:%u: user %s is listed twice", path, lineno, e.user);
            rc = HAMR_EINVAL;
            break;
        }
        if (t->n >= SMTPD_AUTH_USERS_MAX) {
            snprintf(errmsg, errlen, "%s:%u: more than %d users", path, lineno,
                     SMTPD_AUTH_USERS_MAX);
            rc = HAMR_EINVAL;
            break;
        }
        rc = smtpd_auth_table_add(t, &e);
        OPENSSL_cleanse(&e, sizeof(e));
        if (rc != 0) {
            snprintf(errmsg, errlen, "%s:%u: out of memory", path, lineno);
            break;
        }
    }
    fclose(f);
    if (rc != 0) {
        smtpd_auth_table_free(t);
        return rc;
    }
    /*
     * The dummy costs as much as the dearest real entry, no more: a floor
     * above the table's counts would make an unknown user slower than a
     * known one. An empty table has no user to give away: the default.
     */
    t->dummy.iterations = t->n > 0 ? SMTPD_AUTH_ITERATIONS_MIN : SMTPD_AUTH_ITERATIONS;
    for (size_t i = 0; i < t->n; i++)
        if (t->entries[i].iterations > t->dummy.iterations)
            t->dummy.iterations = t->entries[i].iterations;
    t->dummy.salt_len = SMTPD_AUTH_SALT_LEN;
    if (RAND_bytes(t->dummy.salt, (int)t->dummy.salt_len) != 1 ||
        RAND_bytes(t->dummy.hash, sizeof(t->dummy.hash)) != 1) {
        snprintf(errmsg, errlen, "%s:0: no random octets for the dummy entry", path);
        smtpd_auth_table_free(t);
        return HAMR_EIO;
    }
    return 0;
}

/* smtpd_auth_new - load path into a new table. */
int smtpd_auth_new(const char *path, struct smtpd_auth **out, char *errmsg, size_t errlen)
{
    struct smtpd_auth *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
        return HAMR_ENOMEM;
    }
    if (hamr_strlcpy(a->path, path, sizeof(a->path)) >= sizeof(a->path)) {
        snprintf(errmsg, errlen, "auth_file: path too long");
        free(a);
        return HAMR_EINVAL;
    }
    a->table = smtpd_auth_table_new();
    if (a->table == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
        free(a);
        return HAMR_ENOMEM;
    }
    int rc = smtpd_auth_load(a->path, a->table, errmsg, errlen);
    if (rc != 0) {
        smtpd_auth_table_put(a->table);
        free(a);
        return rc;
    }
    log_info("smtpd auth file=%s users=%zu", a->path, a->table->n);
    *out = a;
    return 0;
}

/* smtpd_auth_reload - swap in a fresh read, or keep the old table. */
int smtpd_auth_reload(struct smtpd_auth *a, char *errmsg, size_t errlen)
{
    struct smtpd_auth_table *t = smtpd_auth_table_new();
    if (t == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", a->path);
        log_warn("smtpd auth reload failed, old credentials stay: %s", errmsg);
        return HAMR_ENOMEM;
    }
    int rc = smtpd_auth_load(a->path, t, errmsg, errlen);
    if (rc != 0) {
        smtpd_auth_table_put(t);
        log_warn("smtpd auth reload failed, old credentials stay: %s", errmsg);
        return rc;
    }
    smtpd_auth_table_put(a->table); /* checks in flight keep the old one alive */
    a->table = t;
    log_info("smtpd auth reloaded file=%s users=%zu", a->path, a->table->n);
    return 0;
}

/* smtpd_auth_free - release everything. */
struct smtpd_auth *smtpd_auth_free(struct smtpd_auth *a)
{
    if (a == NULL)
        return NULL;
    smtpd_auth_table_put(a->table);
    free(a);
    return NULL;
}

/* smtpd_auth_users - the table's size. */
size_t smtpd_auth_users(const struct smtpd_auth *a)
{
    return a->table->n;
}

/* smtpd_auth_verify - check against the current table. */
int smtpd_auth_verify(const struct smtpd_auth *a,
                      const char *user,
                      size_t user_len,
                      const char *pass,
                      size_t pass_len)
{
    return smtpd_auth_table_verify(a->table, user, user_len, pass, pass_len);
}

/* smtpd_auth_iterations - the cost of checking user; see smtpd_auth.h. */
unsigned smtpd_auth_iterations(const struct smtpd_auth *a, const char *user, size_t user_len)
{
    const struct smtpd_auth_entry *e = smtpd_auth_find(a->table, user, user_len);
    return e != NULL ? e->iterations : a->table->dummy.iterations;
}

/* smtpd_auth_table_verify - one PBKDF2 run whether or not the user exists. */
int smtpd_auth_table_verify(const struct smtpd_auth_table *t,
                            const char *user,
                            size_t user_len,
                            const char *pass,
                            size_t pass_len)
{
    const struct smtpd_auth_entry *e = smtpd_auth_find(t, user, user_len);
    bool known = e != NULL;
    uint8_t got[SMTPD_AUTH_HASH_LEN];

    if (!known)
        e = &t->dummy;
    if (pass_len > SMTPD_AUTH_PASS_MAX) {
        known = false; /* still run the hash below, on a bounded prefix */
        pass_len = SMTPD_AUTH_PASS_MAX;
    }
    if (smtpd_auth_pbkdf2(pass, pass_len, e->salt, e->salt_len, e->iterations, got) != 0)
        return HAMR_EPERM;
    int same = CRYPTO_memcmp(got, e->hash, sizeof(got)) == 0;
    OPENSSL_cleanse(got, sizeof(got));
    return known && same ? 0 : HAMR_EPERM;
}
