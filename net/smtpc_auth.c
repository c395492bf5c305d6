/*
 * smtpc_auth.c - the outbound SMTP AUTH credentials file (see smtpc_auth.h
 * for its format): which user and password the SMTP client gives a next hop.
 *
 * Owns: the table one read of the file produced (next hops, users,
 * passwords) and a copy of the file's path. A reload builds a whole new
 * table and swaps it in only when the file was read without error.
 *
 * Errors: "PATH:LINE: reason" (LINE 0 for the whole file): HAMR_EIO,
 * HAMR_EPERM for a file others may read or write, HAMR_EINVAL for a bad
 * line, HAMR_ENOMEM. Lookups answer 0 or HAMR_ENOTFOUND.
 *
 * Security: the file holds passwords in the clear, so it must be closed to
 * others (checked on the open descriptor, at start and at every reload, as
 * Postfix's postmap warns about a world-readable map; hamr refuses). No
 * password goes into an error message or a log line, line buffers are
 * wiped after parsing and every table is wiped when freed.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/crypto.h>

#include "util/common.h"
#include "util/err.h"
#include "util/fs.h"
#include "util/log.h"
#include "net/smtpc_auth.h"

#define SMTPC_AUTH_NEXTHOP_MAX 263 /* "[" 255 "]:" 5 */

/* smtpc_auth_entry - one line of the file. */
struct smtpc_auth_entry {
    char nexthop[SMTPC_AUTH_NEXTHOP_MAX + 1];
    char user[SMTPC_AUTH_USER_MAX + 1];
    char pass[SMTPC_AUTH_PASS_MAX + 1];
};

/* smtpc_auth_table - everything one read of the file produced. */
struct smtpc_auth_table {
    struct smtpc_auth_entry *entries;
    size_t n, cap;
};

struct smtpc_auth {
    char path[4096];
    struct smtpc_auth_table table;
};

/* smtpc_auth_table_free - wipe and release a table's entries; the table is empty after. */
static void smtpc_auth_table_free(struct smtpc_auth_table *t)
{
    if (t->entries != NULL)
        OPENSSL_cleanse(t->entries, t->cap * sizeof(*t->entries));
    free(t->entries);
    t->entries = NULL;
    t->n = 0;
    t->cap = 0;
}

/* smtpc_auth_find - the entry of nexthop (ASCII case ignored), or NULL. */
static const struct smtpc_auth_entry *smtpc_auth_find(const struct smtpc_auth_table *t,
                                                      const char *nexthop)
{
    size_t n = strlen(nexthop);
    for (size_t i = 0; i < t->n; i++)
        if (strlen(t->entries[i].nexthop) == n &&
            hamr_strncaseeq(t->entries[i].nexthop, nexthop, n))
            return &t->entries[i];
    return NULL;
}

/*
 * smtpc_auth_nexthop_ok - s (len octets) is "[host]:port" or "host:port":
 * a port 1..65535, a host of printable octets, ':' in it only in brackets.
 */
static bool smtpc_auth_nexthop_ok(const char *s, size_t len)
{
    if (len == 0 || len > SMTPC_AUTH_NEXTHOP_MAX)
        return false;
    size_t colon = len;
    while (colon > 0 && s[colon - 1] != ':')
        colon--;
    if (colon < 2 || colon == len || len - colon > 5)
        return false;
    unsigned long port = 0;
    for (size_t i = colon; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        port = port * 10 + (unsigned long)(s[i] - '0');
    }
    if (port == 0 || port > 65535)
        return false;
    size_t hl = colon - 1; /* the host, brackets included */
    bool bracket = s[0] == '[';
    if (bracket && (hl < 3 || s[hl - 1] != ']'))
        return false;
    for (size_t i = 0; i < hl; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c <= ' ' || c >= 0x7f)
            return false;
        if ((c == '[' && i != 0) || (c == ']' && (!bracket || i != hl - 1)) ||
            (c == ':' && !bracket))
            return false;
    }
    return true;
}

/*
 * smtpc_auth_parse_line - one non-comment line (NUL-terminated, no newline,
 * no trailing white space) into e. NULL, or the reason for the error
 * message (which never quotes the line: it may hold the password).
 */
static const char *smtpc_auth_parse_line(const char *line, struct smtpc_auth_entry *e)
{
    memset(e, 0, sizeof(*e));
    size_t hl = strcspn(line, " \t");
    if (line[hl] == '\0')
        return "expected NEXTHOP USER:PASSWORD";
    if (!smtpc_auth_nexthop_ok(line, hl))
        return "bad next hop (want [host]:port or domain:port, as hamr writes the destination)";
    memcpy(e->nexthop, line, hl);
    const char *cred = line + hl + strspn(line + hl, " \t");
    const char *colon = strchr(cred, ':');
    if (colon == NULL)
        return "expected USER:PASSWORD after the next hop";
    size_t ul = (size_t)(colon - cred);
    if (ul == 0 || ul > SMTPC_AUTH_USER_MAX)
        return "bad user name (1-255 octets)";
    for (size_t i = 0; i < ul; i++) {
        unsigned char c = (unsigned char)cred[i];
        if (c <= ' ' || c == 0x7f)
            return "bad user name (no space or control character)";
    }
    memcpy(e->user, cred, ul);
    const char *pass = colon + 1;
    size_t pl = strlen(pass);
    if (pl == 0 || pl > SMTPC_AUTH_PASS_MAX)
        return "bad password (1-255 octets)";
    for (size_t i = 0; i < pl; i++) {
        unsigned char c = (unsigned char)pass[i];
        if (c < ' ' || c == 0x7f)
            return "bad password (no control character)";
    }
    memcpy(e->pass, pass, pl);
    return NULL;
}

/* smtpc_auth_table_add - append e (copied). HAMR_ENOMEM. */
static int smtpc_auth_table_add(struct smtpc_auth_table *t, const struct smtpc_auth_entry *e)
{
    if (t->n == t->cap) {
        /* Not realloc: the old array holds passwords and is wiped before it goes. */
        size_t cap = t->cap ? t->cap * 2 : 8;
        struct smtpc_auth_entry *p = calloc(cap, sizeof(*p));
        if (p == NULL)
            return HAMR_ENOMEM;
        if (t->n > 0)
            memcpy(p, t->entries, t->n * sizeof(*p));
        size_t n = t->n;
        smtpc_auth_table_free(t);
        t->entries = p;
        t->n = n;
        t->cap = cap;
    }
    t->entries[t->n++] = *e;
    return 0;
}

/* smtpc_auth_check_mode - f (path) is a regular file closed to others. */
static int smtpc_auth_check_mode(FILE *f, const char *path, char *errmsg, size_t errlen)
{
    struct stat st;
    if (fstat(fileno(f), &st) != 0) {
        int e = errno;
        snprintf(errmsg, errlen, "%s:0: %s", path, strerror(e));
        return HAMR_EIO;
    }
    if (!S_ISREG(st.st_mode)) {
        snprintf(errmsg, errlen, "%s:0: not a regular file", path);
        return HAMR_EINVAL;
    }
    if ((st.st_mode & (S_IROTH | S_IWOTH)) != 0) {
        snprintf(errmsg, errlen,
                 "%s:0: holds passwords but others may read or write it (mode %04o); "
                 "chmod o-rwx",
                 path, (unsigned)(st.st_mode & 07777));
        return HAMR_EPERM;
    }
    return 0;
}

/*
 * smtpc_auth_load - read path into t (empty on entry). On error t is
 * released and errmsg holds "PATH:LINE: reason".
 */
static int smtpc_auth_load(const char *path,
                           struct smtpc_auth_table *t,
                           char *errmsg,
                           size_t errlen)
{
    char line[SMTPC_AUTH_LINE_MAX + 2];
    unsigned lineno = 0;
    int rc;

    FILE *f = fopen(path, "r");
    if (f == NULL) {
        int e = errno;
        snprintf(errmsg, errlen, "%s:0: %s", path, strerror(e));
        return HAMR_EIO;
    }
    rc = smtpc_auth_check_mode(f, path, errmsg, errlen);
    while (rc == 0) {
        char *start = NULL;
        int got = fs_table_line(f, path, line, sizeof(line), &lineno, &start, errmsg, errlen);
        if (got <= 0) {
            rc = got; /* 0 at the end of the file */
            break;
        }
        struct smtpc_auth_entry e;
        const char *why = smtpc_auth_parse_line(start, &e);
        OPENSSL_cleanse(line, sizeof(line));
        if (why == NULL && smtpc_auth_find(t, e.nexthop) != NULL)
            why = "next hop listed twice";
        if (why == NULL && t->n >= SMTPC_AUTH_ENTRIES_MAX)
            why = "too many next hops";
        if (why == NULL && smtpc_auth_table_add(t, &e) != 0)
            why = "out of memory";
        OPENSSL_cleanse(&e, sizeof(e));
        if (why != NULL) {
            snprintf(errmsg, errlen, "%s:%u: %s", path, lineno, why);
            rc = HAMR_EINVAL;
        }
    }
    OPENSSL_cleanse(line, sizeof(line));
    fclose(f);
    if (rc != 0)
        smtpc_auth_table_free(t);
    return rc;
}

/* smtpc_auth_new - load path into a new table. */
int smtpc_auth_new(const char *path, struct smtpc_auth **out, char *errmsg, size_t errlen)
{
    struct smtpc_auth *a = calloc(1, sizeof(*a));
    if (a == NULL) {
        snprintf(errmsg, errlen, "%s:0: out of memory", path);
        return HAMR_ENOMEM;
    }
    if (hamr_strlcpy(a->path, path, sizeof(a->path)) >= sizeof(a->path)) {
        snprintf(errmsg, errlen, "auth_file: path too long");
        free(a);
        return HAMR_EINVAL;
    }
    int rc = smtpc_auth_load(a->path, &a->table, errmsg, errlen);
    if (rc != 0) {
        free(a);
        return rc;
    }
    log_info("smtpc auth file=%s nexthops=%zu", a->path, a->table.n);
    *out = a;
    return 0;
}

/* smtpc_auth_reload - swap in a fresh read, or keep the old table. */
int smtpc_auth_reload(struct smtpc_auth *a, char *errmsg, size_t errlen)
{
    struct smtpc_auth_table t = {0};
    int rc = smtpc_auth_load(a->path, &t, errmsg, errlen);
    if (rc != 0)
        return rc;
    smtpc_auth_table_free(&a->table);
    a->table = t;
    log_info("smtpc auth reloaded file=%s nexthops=%zu", a->path, a->table.n);
    return 0;
}

/* smtpc_auth_free - wipe and release. */
struct smtpc_auth *smtpc_auth_free(struct smtpc_auth *a)
{
    if (a == NULL)
        return NULL;
    smtpc_auth_table_free(&a->table);
    free(a);
    return NULL;
}

/* smtpc_auth_count - the table's size. */
size_t smtpc_auth_count(const struct smtpc_auth *a)
{
    return a->table.n;
}

/* smtpc_auth_lookup - the entry of nexthop, or HAMR_ENOTFOUND. */
int smtpc_auth_lookup(const struct smtpc_auth *a,
                      const char *nexthop,
                      const char **user,
                      const char **pass)
{
    const struct smtpc_auth_entry *e = smtpc_auth_find(&a->table, nexthop);
    if (e == NULL)
        return HAMR_ENOTFOUND;
    *user = e->user;
    *pass = e->pass;
    return 0;
}
