/*
 * test_smtpd_rcptmap.c - the relay recipient map of net/smtpd_rcptmap:
 * loading the file, lookups, limits and reloads. No sockets.
 *
 * Covers: a good file with comments, blank lines, CRLF line ends, trailing
 * blanks and duplicates; lookups of full addresses and "@domain" wildcards
 * without regard to case, quoted local parts, near misses (subdomains,
 * suffixes, other users) and addresses that are too long or not addresses;
 * every kind of bad line with its exact "FILE:LINE: reason" (no @, spaces,
 * over-long entries and lines, control characters, NUL, 8-bit octets that
 * are not UTF-8, C1 controls, bad local parts and domains); UTF-8 entries
 * (RFC 6531) compared with ASCII case folded and UTF-8 octet for octet, no
 * IDNA and a missing file; the entry limit (1,000,000
 * load, one more does not) and the 64 MiB file limit; reload keeping the
 * old table on a bad file, and a held table surviving a reload and the
 * map's free.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpd_rcptmap.h"

static char test_dir[64];
static char test_path[128];

/* test_write - replace the test file with len octets of text. */
static void test_write(const char *text, size_t len)
{
    FILE *f = fopen(test_path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

/* test_write_str - replace the test file with a string. */
static void test_write_str(const char *text)
{
    test_write(text, strlen(text));
}

/* setup_dir - a temporary directory for the map file. */
static int setup_dir(void **state)
{
    (void)state;
    hamr_strlcpy(test_dir, "/tmp/hamr-test-rcptmap-XXXXXX", sizeof(test_dir));
    assert_non_null(mkdtemp(test_dir));
    snprintf(test_path, sizeof(test_path), "%s/recipients", test_dir);
    return 0;
}

/* teardown_dir - remove it. */
static int teardown_dir(void **state)
{
    (void)state;
    unlink(test_path);
    return rmdir(test_dir);
}

/* ------------------------------------------------------------------ */

static const char test_good[] =
    "# Recipients of our relay domains\n"
    "\n"
    "Alice@Example.com\n"
    "bob.smith@example.com   \n"
    "   # an indented comment\n"
    "carol+tag@example.com\r\n"
    "\t\n"
    "@Wild.example.org\n"
    "alice@example.com\n" /* a duplicate: counts once */
    "o'brien@sub.example.com\n"
    "x!#$%&'*+-/=?^_`{|}~y@example.net\n"
    "last@example.com"; /* no newline at the end */

/* The lookups against test_good. */
static const struct {
    const char *addr;
    int want;
} test_lookups[] = {
    {"alice@example.com", 0},
    {"ALICE@EXAMPLE.COM", 0},
    {"aLiCe@eXaMpLe.CoM", 0},
    {"\"alice\"@example.com", 0},   /* quoted local part: looked up unquoted */
    {"\"al\\ice\"@example.com", 0}, /* a quoted-pair */
    {"bob.smith@example.com", 0},
    {"carol+tag@example.com", 0},
    {"carol@example.com", HAMR_ENOTFOUND}, /* no recipient delimiter */
    {"o'brien@sub.example.com", 0},
    {"x!#$%&'*+-/=?^_`{|}~y@example.net", 0},
    {"last@example.com", 0},
    {"anyone@wild.example.org", 0},
    {"Someone.Else@WILD.example.ORG", 0},
    {"\"two words\"@wild.example.org", 0},       /* the wildcard covers every user */
    {"x@deep.wild.example.org", HAMR_ENOTFOUND}, /* not subdomains */
    {"x@wild.example.org.evil", HAMR_ENOTFOUND},
    {"x@ild.example.org", HAMR_ENOTFOUND},
    {"mallory@example.com", HAMR_ENOTFOUND},
    {"alice@example.co", HAMR_ENOTFOUND},
    {"alice@example.comm", HAMR_ENOTFOUND},
    {"alic@example.com", HAMR_ENOTFOUND},
    {"alicee@example.com", HAMR_ENOTFOUND},
    {"bob.smith@sub.example.com", HAMR_ENOTFOUND},
    {"postmaster", HAMR_ENOTFOUND}, /* no domain */
    {"", HAMR_ENOTFOUND},
    {"@example.com", HAMR_ENOTFOUND}, /* example.com has no wildcard */
    {"@wild.example.org", 0},         /* the wildcard entry itself */
    {"alice@", HAMR_ENOTFOUND},
};

/* test_good_file - a good file loads, duplicates count once, every lookup answers as listed. */
static void test_good_file(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512] = "";

    test_write_str(test_good);
    int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(smtpd_rcptmap_entries(m), 7);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_lookups); i++) {
        int got = smtpd_rcptmap_lookup(m, test_lookups[i].addr);
        if (got != test_lookups[i].want)
            fail_msg("lookup \"%s\": got %d want %d", test_lookups[i].addr, got,
                     test_lookups[i].want);
    }
    m = smtpd_rcptmap_free(m);
    assert_null(m);
}

/*
 * test_utf8_entries - SMTPUTF8 recipients (RFC 6531): ASCII letters match
 * in any case, UTF-8 octet for octet (no Unicode case folding), a U-label
 * never its A-label (no IDNA).
 */
static void test_utf8_entries(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512] = "";
    static const struct {
        const char *addr;
        int want;
    } cases[] = {
        {"j\xc3\xbcrgen@example.com", 0},
        {"J\xc3\xbcRGEN@EXAMPLE.COM", 0},
        {"j\xc3\x9crgen@example.com", HAMR_ENOTFOUND}, /* capital U umlaut */
        {"jurgen@example.com", HAMR_ENOTFOUND},
        {"anyone@b\xc3\xbc"
         "cher.example",
         0},
        {"Anyone@B\xc3\xbc"
         "CHER.Example",
         0},
        {"anyone@b\xc3\x9c"
         "cher.example",
         HAMR_ENOTFOUND},
        {"anyone@xn--bcher-kva.example", HAMR_ENOTFOUND},
        {"user@xn--caf-dma.example", 0},
        {"user@caf\xc3\xa9.example", HAMR_ENOTFOUND}, /* the same name as a U-label */
        {"\xe7\x94\xa8\xe6\x88\xb7@b\xc3\xbc"
         "cher.example",
         0},
    };

    test_write_str(
        "J\xc3\xbcrgen@Example.com\n@B\xc3\xbc"
        "cher.example\n"
        "user@xn--caf-dma.example\n");
    int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(smtpd_rcptmap_entries(m), 3);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        int got = smtpd_rcptmap_lookup(m, cases[i].addr);
        if (got != cases[i].want)
            fail_msg("lookup \"%s\": got %d want %d", cases[i].addr, got, cases[i].want);
    }
    smtpd_rcptmap_free(m);
}

/* test_empty_file - comments only: loads, nothing is found. */
static void test_empty_file(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512];

    test_write_str("# nobody yet\n\n");
    assert_int_equal(smtpd_rcptmap_new(test_path, &m, err, sizeof(err)), 0);
    assert_int_equal(smtpd_rcptmap_entries(m), 0);
    assert_int_equal(smtpd_rcptmap_lookup(m, "a@example.com"), HAMR_ENOTFOUND);
    smtpd_rcptmap_free(m);
}

/* test_long_entries - a 64-octet local part in a 254-octet entry fits; longer lookups miss. */
static void test_long_entries(void **state)
{
    (void)state;
    char entry[SMTPD_RCPTMAP_ENTRY_MAX + 2], file[600], addr[600];
    struct smtpd_rcptmap *m = NULL;
    char err[512];

    /* 64 'l', '@', then a domain of 'd' labels to 254 octets in all. */
    size_t n = 64;
    memset(entry, 'l', 64);
    entry[n++] = '@';
    for (; n < SMTPD_RCPTMAP_ENTRY_MAX; n++)
        entry[n] = (n % 10 == 0 && n + 1 < SMTPD_RCPTMAP_ENTRY_MAX) ? '.' : 'd';
    entry[n] = '\0';
    assert_int_equal(strlen(entry), 254);
    snprintf(file, sizeof(file), "%s\n", entry);
    test_write_str(file);
    int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
    if (rc != 0)
        fail_msg("%s", err);
    assert_int_equal(smtpd_rcptmap_lookup(m, entry), 0);
    /* One octet more in the local part: too long for a key, not found. */
    snprintf(addr, sizeof(addr), "l%s", entry);
    assert_int_equal(smtpd_rcptmap_lookup(m, addr), HAMR_ENOTFOUND);
    /* A quoted form of the same address is longer than 254 but its key is not. */
    snprintf(addr, sizeof(addr), "\"%.64s\"%s", entry, entry + 64);
    assert_int_equal(smtpd_rcptmap_lookup(m, addr), 0);
    smtpd_rcptmap_free(m);
}

/* One bad file per case: the exact reason on the exact line. */
static const struct {
    const char *label;
    const char *content;
    size_t len;       /* 0: strlen(content) */
    const char *want; /* after the path */
} test_bad[] = {
    {"no @", "a@example.com\nalice\n", 0, ":2: no @ in entry (want user@domain or @domain)"},
    {"space inside", "# x\nalice @example.com\n", 0, ":2: space in entry (one address per line)"},
    {"two entries", "alice@example.com bob@example.com\n", 0,
     ":1: space in entry (one address per line)"},
    {"postfix map value", "alice@example.com OK\n", 0, ":1: space in entry (one address per line)"},
    {"leading blank", "\n\n  alice@example.com\n", 0, ":3: line starts with white space"},
    {"tab inside", "alice\t@example.com\n", 0, ":1: control character in entry"},
    {"escape", "a\033[1m@example.com\n", 0, ":1: control character in entry"},
    {"DEL", "a\177@example.com\n", 0, ":1: control character in entry"},
    {"NUL", "ok@example.com\nal\0ce@example.com\n", 33, ":2: control character in entry"},
    {"bare CR inside", "al\rce@example.com\n", 0, ":1: control character in entry"},
    {"Latin-1", "j\xfcrgen@example.com\n", 0, ":1: non-ASCII octets that are not UTF-8 in entry"},
    {"overlong UTF-8", "a\xc0\xaf@example.com\n", 0,
     ":1: non-ASCII octets that are not UTF-8 in entry"},
    {"C1 control", "a\xc2\x85@example.com\n", 0,
     ":1: non-ASCII octets that are not UTF-8 in entry"},
    {"cut UTF-8 domain", "a@b\xc3.example\n", 0,
     ":1: non-ASCII octets that are not UTF-8 in entry"},
    {"two @", "a@b@example.com\n", 0, ":1: more than one @ in entry"},
    {"no domain", "alice@\n", 0, ":1: no domain after @"},
    {"lone @", "@\n", 0, ":1: no domain after @"},
    {"underscore domain", "a@ex_ample.com\n", 0,
     ":1: bad domain (want letters, digits, '-' and dots)"},
    {"leading dot domain", "a@.example.com\n", 0,
     ":1: bad domain (want letters, digits, '-' and dots)"},
    {"double dot domain", "a@example..com\n", 0,
     ":1: bad domain (want letters, digits, '-' and dots)"},
    {"trailing dot domain", "a@example.com.\n", 0,
     ":1: bad domain (want letters, digits, '-' and dots)"},
    {"address literal", "a@[192.0.2.1]\n", 0,
     ":1: bad domain (want letters, digits, '-' and dots)"},
    {"quoted local part", "\"a\"@example.com\n", 0,
     ":1: bad local part (want a dot-atom, RFC 5322 3.2.3)"},
    {"double dot local", "a..b@example.com\n", 0,
     ":1: bad local part (want a dot-atom, RFC 5322 3.2.3)"},
    {"leading dot local", ".a@example.com\n", 0,
     ":1: bad local part (want a dot-atom, RFC 5322 3.2.3)"},
    {"comma", "a,b@example.com\n", 0, ":1: bad local part (want a dot-atom, RFC 5322 3.2.3)"},
    {"angle brackets", "<a@example.com>\n", 0,
     ":1: bad local part (want a dot-atom, RFC 5322 3.2.3)"},
    {"local part 65",
     "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa@example.com\n", 0,
     ":1: local part longer than 64 octets"},
};

/* test_bad_files - each bad file is refused with its "FILE:LINE: reason". */
static void test_bad_files(void **state)
{
    (void)state;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(test_bad); i++) {
        struct smtpd_rcptmap *m = NULL;
        char err[512] = "", want[700];
        size_t len = test_bad[i].len ? test_bad[i].len : strlen(test_bad[i].content);
        test_write(test_bad[i].content, len);
        int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
        snprintf(want, sizeof(want), "%s%s", test_path, test_bad[i].want);
        if (rc != HAMR_EINVAL || strcmp(err, want) != 0)
            fail_msg("%s: rc %d\n  got:  %s\n  want: %s", test_bad[i].label, rc, err, want);
        assert_null(m);
    }
}

/* test_long_lines - a 255-octet entry, and a line over 1024 octets even inside a comment. */
static void test_long_lines(void **state)
{
    (void)state;
    char text[3000], want[700], err[512];
    struct smtpd_rcptmap *m = NULL;

    /* 255 octets: "a@" and 253 octets of domain. */
    size_t n = (size_t)snprintf(text, sizeof(text), "ok@example.com\na@");
    for (size_t i = 0; i < 253; i++)
        text[n++] = (i % 20 == 19) ? '.' : 'd';
    text[n++] = '\n';
    test_write(text, n);
    assert_int_equal(smtpd_rcptmap_new(test_path, &m, err, sizeof(err)), HAMR_EINVAL);
    snprintf(want, sizeof(want), "%s:2: entry longer than 254 octets", test_path);
    assert_string_equal(err, want);

    /* 1024 octets of comment is a line; 1025 is not. */
    for (int extra = 0; extra <= 1; extra++) {
        n = (size_t)snprintf(text, sizeof(text), "ok@example.com\n\n#");
        memset(text + n, 'c', 1023 + (size_t)extra);
        n += 1023 + (size_t)extra;
        n += (size_t)snprintf(text + n, sizeof(text) - n, "\nlast@example.com\n");
        test_write(text, n);
        int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
        if (extra == 0) {
            if (rc != 0)
                fail_msg("%s", err);
            assert_int_equal(smtpd_rcptmap_lookup(m, "last@example.com"), 0);
            m = smtpd_rcptmap_free(m);
        } else {
            assert_int_equal(rc, HAMR_EINVAL);
            snprintf(want, sizeof(want), "%s:3: line longer than 1024 octets", test_path);
            assert_string_equal(err, want);
        }
    }
}

/* test_missing_file - HAMR_EIO on line 0 with the system's reason. */
static void test_missing_file(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char path[200], err[512], want[700];

    snprintf(path, sizeof(path), "%s/nope", test_dir);
    assert_int_equal(smtpd_rcptmap_new(path, &m, err, sizeof(err)), HAMR_EIO);
    snprintf(want, sizeof(want), "%s:0: No such file or directory", path);
    assert_string_equal(err, want);
    assert_null(m);
}

/* test_entry_limit - 1,000,000 distinct entries load and are found; one more is refused. */
static void test_entry_limit(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512], want[700], addr[64];

    for (int extra = 0; extra <= 1; extra++) {
        FILE *f = fopen(test_path, "w");
        assert_non_null(f);
        fprintf(f, "# a big map\n");
        for (unsigned i = 0; i < SMTPD_RCPTMAP_ENTRIES_MAX + (unsigned)extra; i++)
            fprintf(f, "u%u@d%u.example\n", i, i % 97);
        assert_int_equal(fclose(f), 0);
        int rc = smtpd_rcptmap_new(test_path, &m, err, sizeof(err));
        if (extra == 1) {
            assert_int_equal(rc, HAMR_EINVAL);
            snprintf(want, sizeof(want), "%s:1000002: more than 1000000 entries", test_path);
            assert_string_equal(err, want);
            assert_null(m);
            continue;
        }
        if (rc != 0)
            fail_msg("%s", err);
        assert_int_equal(smtpd_rcptmap_entries(m), SMTPD_RCPTMAP_ENTRIES_MAX);
        for (unsigned i = 0; i < SMTPD_RCPTMAP_ENTRIES_MAX; i++) {
            snprintf(addr, sizeof(addr), "U%u@D%u.EXAMPLE", i, i % 97);
            if (smtpd_rcptmap_lookup(m, addr) != 0)
                fail_msg("%s not found", addr);
        }
        /* Right user, wrong domain; and past the end. */
        assert_int_equal(smtpd_rcptmap_lookup(m, "u5@d6.example"), HAMR_ENOTFOUND);
        assert_int_equal(smtpd_rcptmap_lookup(m, "u1000000@d33.example"), HAMR_ENOTFOUND);
        m = smtpd_rcptmap_free(m);
    }
}

/* test_size_limit - a file of 64 MiB and one octet is refused before it is read. */
static void test_size_limit(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512], want[700];

    test_write_str("a@example.com\n");
    assert_int_equal(truncate(test_path, (off_t)SMTPD_RCPTMAP_FILE_MAX + 1), 0);
    assert_int_equal(smtpd_rcptmap_new(test_path, &m, err, sizeof(err)), HAMR_EINVAL);
    snprintf(want, sizeof(want), "%s:0: file larger than 64 MiB", test_path);
    assert_string_equal(err, want);
    assert_null(m);
}

/* test_reload - a good reload replaces the table, a bad one keeps it; held tables outlive both. */
static void test_reload(void **state)
{
    (void)state;
    struct smtpd_rcptmap *m = NULL;
    char err[512], want[700];

    test_write_str("old@example.com\n");
    assert_int_equal(smtpd_rcptmap_new(test_path, &m, err, sizeof(err)), 0);
    struct smtpd_rcptmap_table *held = smtpd_rcptmap_table_get(m);

    test_write_str("new@example.com\n@example.org\n");
    assert_int_equal(smtpd_rcptmap_reload(m, err, sizeof(err)), 0);
    assert_int_equal(smtpd_rcptmap_entries(m), 2);
    assert_int_equal(smtpd_rcptmap_lookup(m, "old@example.com"), HAMR_ENOTFOUND);
    assert_int_equal(smtpd_rcptmap_lookup(m, "new@example.com"), 0);
    assert_int_equal(smtpd_rcptmap_lookup(m, "x@example.org"), 0);
    /* The held table still answers as before the reload. */
    assert_int_equal(smtpd_rcptmap_table_lookup(held, "old@example.com"), 0);
    assert_int_equal(smtpd_rcptmap_table_lookup(held, "new@example.com"), HAMR_ENOTFOUND);
    smtpd_rcptmap_table_put(held);

    /* A bad file: the error names the line, the current table stays. */
    test_write_str("new@example.com\nbroken\n");
    assert_int_equal(smtpd_rcptmap_reload(m, err, sizeof(err)), HAMR_EINVAL);
    snprintf(want, sizeof(want), "%s:2: no @ in entry (want user@domain or @domain)", test_path);
    assert_string_equal(err, want);
    assert_int_equal(smtpd_rcptmap_lookup(m, "new@example.com"), 0);
    assert_int_equal(smtpd_rcptmap_lookup(m, "x@example.org"), 0);

    /* A file that went away: likewise. */
    unlink(test_path);
    assert_int_equal(smtpd_rcptmap_reload(m, err, sizeof(err)), HAMR_EIO);
    assert_int_equal(smtpd_rcptmap_lookup(m, "new@example.com"), 0);

    /* A table held across the map's free lives until it is put. */
    held = smtpd_rcptmap_table_get(m);
    m = smtpd_rcptmap_free(m);
    assert_int_equal(smtpd_rcptmap_table_lookup(held, "new@example.com"), 0);
    smtpd_rcptmap_table_put(held);
    smtpd_rcptmap_table_put(NULL); /* nothing */
}

/* main - the tests share one temporary directory; only errors are logged. */
int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_good_file),    cmocka_unit_test(test_empty_file),
        cmocka_unit_test(test_long_entries), cmocka_unit_test(test_bad_files),
        cmocka_unit_test(test_long_lines),   cmocka_unit_test(test_missing_file),
        cmocka_unit_test(test_entry_limit),  cmocka_unit_test(test_size_limit),
        cmocka_unit_test(test_reload),       cmocka_unit_test(test_utf8_entries),
    };
    log_set_level(LOG_LEVEL_ERROR);
    return cmocka_run_group_tests(tests, setup_dir, teardown_dir);
}
