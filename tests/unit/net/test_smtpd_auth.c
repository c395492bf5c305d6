/*
 * test_smtpd_auth.c - SMTP AUTH (RFC 4954): the credentials file and
 * password checks of net/smtpd_auth, and whole AUTH dialogues against
 * net/smtpd_session with no socket. The fake transport records replies; its
 * starttls hook accepts at once and passes later input through unchanged,
 * so a session is "inside TLS" right after its 220 to STARTTLS.
 *
 * Covers: strict base64; credentials lines good and bad, with the line
 * number in the error; verify with the right and wrong password and an
 * unknown user; an unknown user costs the CPU time of a known one (the
 * dummy entry takes the table's highest iteration count, not the default;
 * an empty table uses the default); hash_line round trip; reload (new
 * table on success, old kept on failure); EHLO offering AUTH only inside
 * TLS; every AUTH reply of SECURITY.md S16 (502, 530, 503 x3, 504, 334, 235, 535, 501 5.7.0,
 * 501 5.5.2, 500 5.5.6); PLAIN with an initial response and after 334,
 * authzid rules and embedded NULs (RFC 4616); LOGIN with its two prompts;
 * relay allowed only after AUTH with "with ESMTPSA" in Received:; 421
 * after three failures; no password or AUTH payload in the log.
 * The asynchronous check (io.auth_check, faked here and completed by the
 * test): no reply and nothing pipelined behind AUTH runs until it calls
 * back, reading paused and no client deadline meanwhile; 235 or 535 after
 * the callback, in order; 454 when the check cannot be queued; a client
 * that leaves, or a server shutdown, while a check is pending; the table
 * reference a check holds survives a reload and the table's free.
 * The per-client AUTH rate (io.auth_rate, faked): only AUTH commands that
 * pass the order checks count; over the rate 450 4.7.1 naming the client,
 * no exchange and no password check, counted toward max_errors but not
 * toward auth_max_failures; the session goes on and AUTH works again once
 * the rate allows it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/buf.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpd.h"
#include "net/smtpd_auth.h"
#include "net/smtpd_session.h"
#include "tests/lib/testlib_session_io.h"

#define TEST_ITER 1000 /* cheap hashes for tests; the file allows 1000 and up */

/* ------------------------------------------------------------------ */
/* Fakes                                                               */
/* ------------------------------------------------------------------ */

/* fake_check - an io.auth_check that keeps the request for the test to answer. */
struct fake_check {
    int calls;
    int refuse; /* returned when not 0; done is then never called */
    const struct smtpd_auth *auth;
    char user[SMTPD_AUTH_USER_MAX + 1];
    char pass[SMTPD_AUTH_PASS_MAX + 1];
    void (*done)(void *arg, int rc);
    void *arg;
};

/* fake_io - the shared fake transport, plus the AUTH hooks only these tests use. */
struct fake_io {
    struct testlib_session_io base;
    struct fake_check check; /* used when the harness is async */
    int rate_calls;          /* io.auth_rate calls */
    int rate_rc;             /* what io.auth_rate answers */
};

/* fake_io_auth_check - record the request (copies, as the contract says); the test answers. */
static int fake_io_auth_check(void *data,
                              const struct smtpd_auth *auth,
                              const char *user,
                              size_t user_len,
                              const char *pass,
                              size_t pass_len,
                              void (*done)(void *arg, int rc),
                              void *arg)
{
    struct fake_io *io = ((struct testlib_session_io *)data)->owner;
    struct fake_check *c = &io->check;
    c->calls++;
    assert_null(c->done); /* one check at a time per session */
    if (c->refuse != 0)
        return c->refuse;
    assert_true(user_len < sizeof(c->user) && pass_len < sizeof(c->pass));
    memcpy(c->user, user, user_len);
    c->user[user_len] = '\0';
    memcpy(c->pass, pass, pass_len);
    c->pass[pass_len] = '\0';
    c->auth = auth;
    c->done = done;
    c->arg = arg;
    return 0;
}

/* fake_io_auth_rate - count the AUTH command; the test chose the answer. */
static int fake_io_auth_rate(void *data)
{
    struct fake_io *io = ((struct testlib_session_io *)data)->owner;
    io->rate_calls++;
    return io->rate_rc;
}

struct fake_sink {
    int ids;
    smtpd_sink_cb cb;
    void *cb_arg;
    char *body; /* the last submitted body, NUL-terminated */
};

/* fake_sink_new_id - Q1, Q2, ... */
static int fake_sink_new_id(void *data, char *id, size_t idlen)
{
    struct fake_sink *k = data;
    snprintf(id, idlen, "Q%d", ++k->ids);
    return 0;
}

/* fake_sink_submit - keep a copy of the body; the test calls back. */
static int fake_sink_submit(void *data,
                            const struct smtpd_envelope *env,
                            smtpd_sink_cb cb,
                            void *arg)
{
    struct fake_sink *k = data;
    free(k->body);
    k->body = strndup((const char *)env->body, env->body_len);
    k->cb = cb;
    k->cb_arg = arg;
    return 0;
}

/* ------------------------------------------------------------------ */
/* Harness                                                             */
/* ------------------------------------------------------------------ */

struct harness {
    struct smtpd_policy policy;
    char *domains[1];
    struct smtpd_auth *auth;
    char path[64];
    struct fake_io io;
    struct fake_sink sink;
    bool async; /* the next test_start installs fake_io_auth_check */
    struct smtpd_session *s;
};

/* test_write_file - replace the file at path with text. */
static void test_write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
    assert_int_equal(fclose(f), 0);
}

/* test_cred_line - a credentials line for user/pass with TEST_ITER, plus "\n". */
static void test_cred_line(char *out, size_t outlen, const char *user, const char *pass)
{
    assert_int_equal(smtpd_auth_hash_line(user, pass, strlen(pass), TEST_ITER, out, outlen - 1), 0);
    size_t n = strlen(out);
    out[n] = '\n';
    out[n + 1] = '\0';
}

/* test_setup - a credentials file with alice/secret-alice and bob/b0b, loaded. */
static int test_setup(void **state)
{
    struct harness *h = calloc(1, sizeof(*h));
    char a[512], b[512], text[1200], err[256];
    assert_non_null(h);
    assert_int_equal(testlib_session_io_init(&h->io.base, true), 0);
    h->io.base.owner = &h->io;
    snprintf(h->path, sizeof(h->path), "/tmp/hamr-auth-test-XXXXXX");
    int fd = mkstemp(h->path);
    assert_true(fd >= 0);
    close(fd);
    test_cred_line(a, sizeof(a), "alice", "secret-alice");
    test_cred_line(b, sizeof(b), "bob@hamr.test", "b0b");
    snprintf(text, sizeof(text), "# users\n\n%s%s", a, b);
    test_write_file(h->path, text);
    assert_int_equal(smtpd_auth_new(h->path, &h->auth, err, sizeof(err)), 0);
    assert_int_equal(smtpd_auth_users(h->auth), 2);

    struct smtpd_policy *p = &h->policy;
    hamr_strlcpy(p->hostname, "mx.hamr.test", sizeof(p->hostname));
    h->domains[0] = "hamr.test";
    p->relay_domains = h->domains;
    p->n_relay_domains = 1;
    p->message_size_limit = 1024 * 1024;
    p->recipient_limit = 100;
    p->header_size_limit = 64 * 1024;
    p->hopcount_limit = 50;
    p->max_errors = 20;
    p->command_timeout_ms = 300000;
    p->data_timeout_ms = 300000;
    p->auth = h->auth;
    p->auth_max_failures = 3;
    *state = h;
    return 0;
}

/* test_teardown - free session, pending submit and check, table and file. */
static int test_teardown(void **state)
{
    struct harness *h = *state;
    if (h->s != NULL)
        h->s = smtpd_session_free(h->s);
    if (h->io.check.done != NULL)
        h->io.check.done(h->io.check.arg, HAMR_EPERM);
    if (h->sink.cb != NULL)
        h->sink.cb(h->sink.cb_arg, HAMR_ESHUTDOWN);
    free(h->sink.body);
    h->auth = smtpd_auth_free(h->auth);
    unlink(h->path);
    testlib_session_io_free(&h->io.base);
    free(h);
    return 0;
}

/* test_start - a greeted session from an outside client, output discarded. */
static void test_start(struct harness *h, bool tls_offered)
{
    struct smtpd_session_io io = testlib_session_io_ops(&h->io.base);
    io.starttls = tls_offered ? testlib_session_io_starttls : NULL;
    io.auth_check = h->async ? fake_io_auth_check : NULL;
    io.auth_rate = fake_io_auth_rate;
    /* The test's clock, not the machine's: a deadline asked for is exactly the timeout
     * however long the machine took between two calls. */
    io.now = testlib_session_io_now;
    struct smtpd_sink sink = {
        .data = &h->sink,
        .new_id = fake_sink_new_id,
        .submit = fake_sink_submit,
    };
    assert_int_equal(smtpd_session_new(&h->policy, &sink, &io, "192.0.2.7", &h->s), 0);
    smtpd_session_greet(h->s);
}

/* test_send - input text to the session. */
static void test_send(struct harness *h, const char *text)
{
    smtpd_session_input(h->s, text, strlen(text));
}

/* test_take - the output since the last take. */
static const char *test_take(struct harness *h)
{
    return testlib_session_io_take(&h->io.base);
}

#define test_expect(h, want) assert_string_equal(test_take(h), want)

/* test_tls_ehlo - greeted, STARTTLS, EHLO again inside TLS; output discarded. */
static void test_tls_ehlo(struct harness *h)
{
    test_start(h, true);
    test_send(h, "EHLO client.example\r\n");
    test_send(h, "STARTTLS\r\n");
    assert_int_equal(h->io.base.starttls, 1);
    assert_true(smtpd_session_tls(h->s));
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
}

/* test_b64 - base64 of a byte string into out. */
static const char *test_b64(const void *in, size_t len, char *out, size_t outlen)
{
    assert_int_equal(smtpd_auth_b64_encode(in, len, out, outlen), 0);
    return out;
}

/* test_plain_into - "AUTH PLAIN <base64(authzid NUL user NUL pass)>\r\n" into cmd. */
static const char *test_plain_into(char *cmd,
                                   size_t cmdlen,
                                   const char *authzid,
                                   const char *user,
                                   const char *pass)
{
    char msg[256], b64[400];
    size_t n = (size_t)snprintf(msg, sizeof(msg), "%s%c%s%c%s", authzid, 0, user, 0, pass);
    snprintf(cmd, cmdlen, "AUTH PLAIN %s\r\n", test_b64(msg, n, b64, sizeof(b64)));
    return cmd;
}

/* test_plain - as test_plain_into, in a static buffer valid until the next call. */
static const char *test_plain(const char *authzid, const char *user, const char *pass)
{
    static char cmd[512];
    return test_plain_into(cmd, sizeof(cmd), authzid, user, pass);
}

/* test_reset_io - forget the output and counters of the last session. */
static void test_reset_io(struct harness *h)
{
    testlib_session_io_free(&h->io.base);
    memset(&h->io, 0, sizeof(h->io));
    assert_int_equal(testlib_session_io_init(&h->io.base, true), 0);
    h->io.base.owner = &h->io;
}

/* ------------------------------------------------------------------ */
/* net/smtpd_auth                                                      */
/* ------------------------------------------------------------------ */

/* test_base64 - strict decoding: padding, alphabet, canonical bits, room. */
static void test_base64(void **state)
{
    static const struct {
        const char *label, *in;
        int want_rc;
        const char *want;
    } cases[] = {
        {"empty", "", 0, ""},
        {"one octet", "YQ==", 0, "a"},
        {"two octets", "YWI=", 0, "ab"},
        {"three octets", "YWJj", 0, "abc"},
        {"username prompt", "VXNlcm5hbWU6", 0, "Username:"},
        {"length not a multiple of 4", "YWJ", HAMR_EINVAL, NULL},
        {"no padding", "YQ", HAMR_EINVAL, NULL},
        {"padding in the middle", "YQ==YWJj", HAMR_EINVAL, NULL},
        {"char after padding", "YQ=j", HAMR_EINVAL, NULL},
        {"three pads", "Y===", HAMR_EINVAL, NULL},
        {"white space", "YW Jj", HAMR_EINVAL, NULL},
        {"url alphabet", "YW-j", HAMR_EINVAL, NULL},
        {"non-canonical bits", "YR==", HAMR_EINVAL, NULL},
        {"star", "*", HAMR_EINVAL, NULL},
    };
    (void)state;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        uint8_t out[64];
        size_t n = 99;
        int rc = smtpd_auth_b64_decode(cases[i].in, strlen(cases[i].in), out, sizeof(out), &n);
        if (rc != cases[i].want_rc)
            fail_msg("%s: rc %d", cases[i].label, rc);
        if (rc == 0) {
            assert_int_equal(n, strlen(cases[i].want));
            assert_memory_equal(out, cases[i].want, n);
            char back[64];
            assert_string_equal(test_b64(out, n, back, sizeof(back)), cases[i].in);
        }
    }
    uint8_t small[2];
    size_t n;
    assert_int_equal(smtpd_auth_b64_decode("YWJj", 4, small, sizeof(small), &n), HAMR_ETOOBIG);
    char tiny[4];
    assert_int_equal(smtpd_auth_b64_encode((const uint8_t *)"abc", 3, tiny, sizeof(tiny)),
                     HAMR_ETOOBIG);
}

/* test_file_lines - good files load; each bad line is named with its number. */
static void test_file_lines(void **state)
{
    struct harness *h = *state;
    char good[256];
    test_cred_line(good, sizeof(good), "carol", "pw");
    good[strlen(good) - 1] = '\0';
    static const char salt[] = "AAAAAAAAAAAAAAAAAAAAAA==";                     /* 16 zeros */
    static const char hash[] = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="; /* 32 zeros */
    char buf[24][600];
    const struct {
        const char *label;
        const char *text;
        int want_rc;
        const char *want_err; /* after "PATH" */
        size_t want_users;
    } cases[] = {
        {"comments only", "# nothing\n\n   # indented comment\n", 0, NULL, 0},
        {"one user, CRLF, no final newline", (snprintf(buf[0], 600, "%s\r", good), buf[0]), 0, NULL,
         1},
        {"trailing blanks", (snprintf(buf[1], 600, "%s  \n", good), buf[1]), 0, NULL, 1},
        {"no colon", "# x\nalice\n", HAMR_EINVAL, ":2: expected user:", 0},
        {"empty user",
         (snprintf(buf[2], 600, "\n\n:$pbkdf2-sha256$1000$%s$%s\n", salt, hash), buf[2]),
         HAMR_EINVAL, ":3: bad user name", 0},
        {"space in user",
         (snprintf(buf[3], 600, "a b:$pbkdf2-sha256$1000$%s$%s\n", salt, hash), buf[3]),
         HAMR_EINVAL, ":1: bad user name", 0},
        {"other scheme", "u:$6$abc$def\n", HAMR_EINVAL, ":1: unknown hash scheme", 0},
        {"iterations too low",
         (snprintf(buf[4], 600, "u:$pbkdf2-sha256$999$%s$%s\n", salt, hash), buf[4]), HAMR_EINVAL,
         ":1: iteration count out of range", 0},
        {"iterations not a number",
         (snprintf(buf[5], 600, "u:$pbkdf2-sha256$x$%s$%s\n", salt, hash), buf[5]), HAMR_EINVAL,
         ":1: bad iteration count", 0},
        {"iterations huge",
         (snprintf(buf[6], 600, "u:$pbkdf2-sha256$99999999999$%s$%s\n", salt, hash), buf[6]),
         HAMR_EINVAL, ":1: bad iteration count", 0},
        {"bad salt", (snprintf(buf[7], 600, "u:$pbkdf2-sha256$1000$!!!!$%s\n", hash), buf[7]),
         HAMR_EINVAL, ":1: bad salt", 0},
        {"short salt", (snprintf(buf[8], 600, "u:$pbkdf2-sha256$1000$AAAA$%s\n", hash), buf[8]),
         HAMR_EINVAL, ":1: bad salt", 0},
        {"missing hash", (snprintf(buf[9], 600, "u:$pbkdf2-sha256$1000$%s\n", salt), buf[9]),
         HAMR_EINVAL, ":1: missing hash", 0},
        {"short hash", (snprintf(buf[10], 600, "u:$pbkdf2-sha256$1000$%s$AAAA\n", salt), buf[10]),
         HAMR_EINVAL, ":1: bad hash", 0},
        {"duplicate user", (snprintf(buf[11], 600, "%s\n# again\n%s\n", good, good), buf[11]),
         HAMR_EINVAL, ":3: user carol is listed twice", 0},
        {"indented entry", (snprintf(buf[12], 600, " %s\n", good), buf[12]), HAMR_EINVAL,
         ":1: line starts with white space", 0},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char err[512] = "", want[256];
        struct smtpd_auth *a = NULL;
        test_write_file(h->path, cases[i].text);
        int rc = smtpd_auth_new(h->path, &a, err, sizeof(err));
        if (rc != cases[i].want_rc)
            fail_msg("%s: rc %d (%s)", cases[i].label, rc, err);
        if (rc == 0) {
            assert_int_equal(smtpd_auth_users(a), cases[i].want_users);
            a = smtpd_auth_free(a);
            continue;
        }
        snprintf(want, sizeof(want), "%s%s", h->path, cases[i].want_err);
        if (strncmp(err, want, strlen(want)) != 0)
            fail_msg("%s: error \"%s\", want prefix \"%s\"", cases[i].label, err, want);
    }
    /* A line too long for the reader, and a file that is not there. */
    char *longline = malloc(3000);
    memset(longline, 'a', 2998);
    longline[2998] = '\n';
    longline[2999] = '\0';
    test_write_file(h->path, longline);
    free(longline);
    char err[512];
    struct smtpd_auth *a = NULL;
    assert_int_equal(smtpd_auth_new(h->path, &a, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, ":1: line longer than"));
    assert_int_equal(smtpd_auth_new("/nonexistent/hamr-auth", &a, err, sizeof(err)), HAMR_EIO);
    assert_string_equal(err, "/nonexistent/hamr-auth:0: No such file or directory");
}

/* test_verify - right and wrong passwords, unknown users, hash_line checks, reload. */
static void test_verify(void **state)
{
    struct harness *h = *state;
    static const struct {
        const char *label, *user, *pass;
        int want;
    } cases[] = {
        {"alice right", "alice", "secret-alice", 0},
        {"bob right", "bob@hamr.test", "b0b", 0},
        {"alice wrong", "alice", "secret-alicE", HAMR_EPERM},
        {"alice prefix", "alice", "secret", HAMR_EPERM},
        {"alice empty", "alice", "", HAMR_EPERM},
        {"bob's password for alice", "alice", "b0b", HAMR_EPERM},
        {"user case matters", "Alice", "secret-alice", HAMR_EPERM},
        {"unknown user", "mallory", "secret-alice", HAMR_EPERM},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        int rc = smtpd_auth_verify(h->auth, cases[i].user, strlen(cases[i].user), cases[i].pass,
                                   strlen(cases[i].pass));
        if (rc != cases[i].want)
            fail_msg("%s: rc %d", cases[i].label, rc);
    }
    /* A user name with a NUL in it is not "alice". */
    assert_int_equal(smtpd_auth_verify(h->auth, "alice\0x", 7, "secret-alice", 12), HAMR_EPERM);

    char line[512];
    assert_int_equal(smtpd_auth_hash_line("a:b", "x", 1, TEST_ITER, line, sizeof(line)),
                     HAMR_EINVAL);
    assert_int_equal(smtpd_auth_hash_line("", "x", 1, TEST_ITER, line, sizeof(line)), HAMR_EINVAL);
    assert_int_equal(smtpd_auth_hash_line("a", "x", 1, 999, line, sizeof(line)), HAMR_EINVAL);
    assert_int_equal(smtpd_auth_hash_line("a", "x", 1, TEST_ITER, line, 20), HAMR_ETOOBIG);
    char line2[512];
    assert_int_equal(smtpd_auth_hash_line("a", "x", 1, TEST_ITER, line, sizeof(line)), 0);
    assert_int_equal(smtpd_auth_hash_line("a", "x", 1, TEST_ITER, line2, sizeof(line2)), 0);
    assert_string_not_equal(line, line2); /* a fresh salt each time */
    assert_int_equal(strncmp(line, "a:$pbkdf2-sha256$1000$", 22), 0);

    /* Reload: a new file replaces the table; a broken one leaves it alone. */
    char dave[512], err[256];
    test_cred_line(dave, sizeof(dave), "dave", "d4ve");
    test_write_file(h->path, dave);
    assert_int_equal(smtpd_auth_reload(h->auth, err, sizeof(err)), 0);
    assert_int_equal(smtpd_auth_users(h->auth), 1);
    assert_int_equal(smtpd_auth_verify(h->auth, "dave", 4, "d4ve", 4), 0);
    assert_int_equal(smtpd_auth_verify(h->auth, "alice", 5, "secret-alice", 12), HAMR_EPERM);
    test_write_file(h->path, "broken\n");
    assert_int_equal(smtpd_auth_reload(h->auth, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, ":1: expected user:"));
    assert_int_equal(smtpd_auth_verify(h->auth, "dave", 4, "d4ve", 4), 0);
}

/*
 * test_unknown_user_cost - SECURITY.md S16: the time of a check does not
 * tell whether the user exists. Every user here has TEST_ITER iterations; an
 * unknown user must cost the same, not the default 100000 (a 100-fold gap).
 * A table with no users has nothing to give away and keeps the default.
 */
static void test_unknown_user_cost(void **state)
{
    struct harness *h = *state;
    assert_int_equal(smtpd_auth_iterations(h->auth, "alice", 5), TEST_ITER);
    assert_int_equal(smtpd_auth_iterations(h->auth, "mallory", 7), TEST_ITER);
    assert_int_equal(smtpd_auth_iterations(h->auth, "", 0), TEST_ITER);

    char path[64], err[256];
    struct smtpd_auth *empty = NULL;
    snprintf(path, sizeof(path), "/tmp/hamr-auth-empty-XXXXXX");
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    test_write_file(path, "# nobody yet\n");
    assert_int_equal(smtpd_auth_new(path, &empty, err, sizeof(err)), 0);
    unlink(path);
    assert_int_equal(smtpd_auth_users(empty), 0);
    assert_int_equal(smtpd_auth_iterations(empty, "mallory", 7), SMTPD_AUTH_ITERATIONS);
    assert_int_equal(smtpd_auth_verify(empty, "mallory", 7, "wrong", 5), HAMR_EPERM);
    smtpd_auth_free(empty);
}

/* ------------------------------------------------------------------ */
/* AUTH in the session                                                 */
/* ------------------------------------------------------------------ */

/* test_ehlo_offer - AUTH appears in EHLO only inside TLS and only when configured. */
static void test_ehlo_offer(void **state)
{
    struct harness *h = *state;

    test_start(h, true);
    test_take(h);
    test_send(h, "EHLO client.example\r\n");
    test_expect(
        h,
        "250-mx.hamr.test\r\n250-PIPELINING\r\n250-SIZE 1048576\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
        "250-SMTPUTF8\r\n250-DSN\r\n250-STARTTLS\r\n250 ENHANCEDSTATUSCODES\r\n");
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    test_send(h, "STARTTLS\r\n");
    test_expect(h, "220 2.0.0 Ready to start TLS\r\n");
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h, "503 5.5.1 Error: send HELO/EHLO first\r\n");
    test_send(h, "HELO client.example\r\n");
    test_take(h);
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h, "503 5.5.1 Error: send EHLO first\r\n");
    test_send(h, "EHLO client.example\r\n");
    test_expect(
        h,
        "250-mx.hamr.test\r\n250-PIPELINING\r\n250-SIZE 1048576\r\n250-8BITMIME\r\n250-CHUNKING\r\n"
        "250-SMTPUTF8\r\n250-DSN\r\n250-AUTH PLAIN LOGIN\r\n250-REQUIRETLS\r\n"
        "250 ENHANCEDSTATUSCODES\r\n");
    h->s = smtpd_session_free(h->s);

    /* Not configured: never offered, and AUTH is not implemented. */
    h->policy.auth = NULL;
    test_reset_io(h);
    test_tls_ehlo(h);
    test_send(h, "EHLO client.example\r\n");
    assert_null(strstr(test_take(h), "AUTH"));
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "502 5.5.1 Error: command not implemented\r\n");
}

/* test_auth_replies - order, syntax and outcome replies, table-driven on fresh sessions. */
static void test_auth_replies(void **state)
{
    struct harness *h = *state;
    char plain_alice[512], b64[400], msg[256], longline[13000];
    char no_nul[512], third_nul[512], zid_same[512], zid_other[512], wrong[512], unknown[512],
        no_user[512];
    size_t n;

    test_plain_into(plain_alice, sizeof(plain_alice), "", "alice", "secret-alice");
    test_plain_into(zid_same, sizeof(zid_same), "alice", "alice", "secret-alice");
    test_plain_into(zid_other, sizeof(zid_other), "bob@hamr.test", "alice", "secret-alice");
    test_plain_into(wrong, sizeof(wrong), "", "alice", "wrong");
    test_plain_into(unknown, sizeof(unknown), "", "mallory", "secret-alice");
    test_plain_into(no_user, sizeof(no_user), "", "", "secret-alice");
    snprintf(no_nul, sizeof(no_nul), "AUTH PLAIN %s\r\n",
             test_b64("alicesecret-alice", 17, b64, sizeof(b64)));
    n = (size_t)snprintf(msg, sizeof(msg), "%calice%csecret-alice%cx", 0, 0, 0);
    snprintf(third_nul, sizeof(third_nul), "AUTH PLAIN %s\r\n", test_b64(msg, n, b64, sizeof(b64)));
    /* 12289 base64 octets: one over the RFC 4954 limit. */
    memset(longline, 'A', 12292);
    memcpy(longline + 12292, "\r\n", 3);
    /* The same as an initial response: over the 512-octet command line. */
    char longinitial[sizeof("AUTH PLAIN ") + 12292 + 2];
    memcpy(longinitial, "AUTH PLAIN ", 11);
    memcpy(longinitial + 11, longline, 12292 + 3);
    const struct {
        const char *label;
        const char *input[4];
        const char *want;
        bool want_auth;
    } cases[] = {
        {"plain initial", {plain_alice}, "235 2.7.0 Authentication successful\r\n", true},
        {"plain after 334",
         {"AUTH PLAIN\r\n", "AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n"},
         "334 \r\n235 2.7.0 Authentication successful\r\n",
         true},
        {"mechanism in lower case",
         {"auth plain AGFsaWNlAHNlY3JldC1hbGljZQ==\r\n"},
         "235 2.7.0 Authentication successful\r\n",
         true},
        {"authzid equal to authcid", {zid_same}, "235 2.7.0 Authentication successful\r\n", true},
        {"authzid of another user",
         {zid_other},
         "535 5.7.8 Error: authentication failed\r\n",
         false},
        {"wrong password", {wrong}, "535 5.7.8 Error: authentication failed\r\n", false},
        {"unknown user", {unknown}, "535 5.7.8 Error: authentication failed\r\n", false},
        {"no NUL at all", {no_nul}, "535 5.7.8 Error: authentication failed\r\n", false},
        {"third NUL in the password",
         {third_nul},
         "535 5.7.8 Error: authentication failed\r\n",
         false},
        {"empty user", {no_user}, "535 5.7.8 Error: authentication failed\r\n", false},
        {"empty response",
         {"AUTH PLAIN =\r\n"},
         "535 5.7.8 Error: authentication failed\r\n",
         false},
        {"bad base64 initial",
         {"AUTH PLAIN AGFsaWNl!!==\r\n"},
         "501 5.5.2 Error: invalid base64 data\r\n",
         false},
        {"bad base64 after 334",
         {"AUTH PLAIN\r\n", "not base64\r\n"},
         "334 \r\n501 5.5.2 Error: invalid base64 data\r\n",
         false},
        {"cancel plain",
         {"AUTH PLAIN\r\n", "*\r\n"},
         "334 \r\n501 5.7.0 Authentication aborted\r\n",
         false},
        {"cancel login",
         {"AUTH LOGIN\r\n", "YWxpY2U=\r\n", "*\r\n"},
         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n501 5.7.0 Authentication aborted\r\n",
         false},
        {"login",
         {"AUTH LOGIN\r\n", "YWxpY2U=\r\n", "c2VjcmV0LWFsaWNl\r\n"},
         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n",
         true},
        {"login pipelined in one read",
         {"AUTH LOGIN\r\nYWxpY2U=\r\nc2VjcmV0LWFsaWNl\r\n"},
         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n",
         true},
        {"login with initial user",
         {"AUTH LOGIN YWxpY2U=\r\n", "c2VjcmV0LWFsaWNl\r\n"},
         "334 UGFzc3dvcmQ6\r\n235 2.7.0 Authentication successful\r\n",
         true},
        {"login wrong password",
         {"AUTH LOGIN\r\n", "YWxpY2U=\r\n", "d3Jvbmc=\r\n"},
         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Error: authentication failed\r\n",
         false},
        {"response too long",
         {"AUTH PLAIN\r\n", longline},
         "334 \r\n500 5.5.6 Authentication Exchange line is too long\r\n",
         false},
        {"initial response too long",
         {longinitial},
         "500 5.5.6 Authentication Exchange line is too long\r\n",
         false},
        {"response with bare LF",
         {"AUTH PLAIN\r\n", "AGFsaWNlAHNlY3JldC1hbGljZQ==\n"},
         "334 \r\n500 5.5.2 Error: bare <LF> received\r\n",
         false},
        {"unknown mechanism",
         {"AUTH CRAM-MD5\r\n"},
         "504 5.5.4 Unrecognized authentication type\r\n",
         false},
        {"no mechanism", {"AUTH\r\n"}, "501 5.5.4 Syntax: AUTH mechanism\r\n", false},
        {"during a transaction",
         {"MAIL FROM:<a@example.org>\r\n", plain_alice},
         "250 2.1.0 Ok\r\n503 5.5.1 Error: MAIL transaction in progress\r\n",
         false},
        {"twice",
         {plain_alice, plain_alice},
         "235 2.7.0 Authentication successful\r\n503 5.5.1 Error: already authenticated\r\n",
         true},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        test_reset_io(h);
        test_tls_ehlo(h);
        for (size_t j = 0; j < 4 && cases[i].input[j] != NULL; j++)
            test_send(h, cases[i].input[j]);
        const char *got = test_take(h);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("%s: got \"%s\" want \"%s\"", cases[i].label, got, cases[i].want);
        /* Still in step: the next command is read as a command. */
        test_send(h, "NOOP\r\n");
        test_expect(h, "250 2.0.0 Ok\r\n");
        /* Authenticated exactly when expected: it shows in relay rights. */
        test_send(h, "RSET\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\n");
        got = test_take(h);
        bool relayed = strstr(got, "250 2.1.5 Ok") != NULL;
        if (relayed != cases[i].want_auth)
            fail_msg("%s: relay %d: %s", cases[i].label, relayed, got);
        h->s = smtpd_session_free(h->s);
    }
}

/* test_relay_after_auth - a foreign domain is refused before AUTH and allowed after; ESMTPSA. */
static void test_relay_after_auth(void **state)
{
    struct harness *h = *state;

    test_tls_ehlo(h);
    test_send(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<far@elsewhere.example>\r\nRSET\r\n");
    test_expect(h,
                "250 2.1.0 Ok\r\n554 5.7.1 <far@elsewhere.example>: Relay access denied\r\n"
                "250 2.0.0 Ok\r\n");
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "235 2.7.0 Authentication successful\r\n");
    test_send(h, "MAIL FROM:<alice@example.org>\r\nRCPT TO:<far@elsewhere.example>\r\nDATA\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    test_send(h, "Subject: x\r\n\r\nhi\r\n.\r\n");
    assert_non_null(h->sink.cb);
    assert_non_null(strstr(h->sink.body, "by mx.hamr.test (hamr) with ESMTPSA id Q1"));
    smtpd_sink_cb cb = h->sink.cb;
    h->sink.cb = NULL;
    cb(h->sink.cb_arg, 0);
    test_expect(h, "250 2.0.0 Ok: queued as Q1\r\n");
    /* EHLO again keeps the authentication (RFC 4954 does not reset it), but not the offer. */
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h, "503 5.5.1 Error: already authenticated\r\n");
}

/* test_three_failures - 535 twice, then 535 and 421 4.7.0, closed; errors counted. */
static void test_three_failures(void **state)
{
    struct harness *h = *state;

    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "one"));
    test_expect(h, "535 5.7.8 Error: authentication failed\r\n");
    test_send(h, "AUTH LOGIN\r\nYWxpY2U=\r\ndHdv\r\n");
    test_expect(h,
                "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n535 5.7.8 Error: authentication "
                "failed\r\n");
    assert_int_equal(h->io.base.closes, 0);
    test_send(h, test_plain("", "mallory", "three"));
    test_expect(h,
                "535 5.7.8 Error: authentication failed\r\n"
                "421 4.7.0 mx.hamr.test Error: too many failed authentications\r\n");
    assert_int_equal(h->io.base.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "");

    /* 535 counts toward max_errors as well. */
    h->s = smtpd_session_free(h->s);
    h->policy.auth_max_failures = 10;
    h->policy.max_errors = 2;
    test_reset_io(h);
    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "one"));
    test_send(h, test_plain("", "alice", "two"));
    test_expect(h,
                "535 5.7.8 Error: authentication failed\r\n"
                "535 5.7.8 Error: authentication failed\r\n"
                "421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.base.closes, 1);
}

/* test_no_secret_in_log - the log names the user but never the password or the payload. */
static void test_no_secret_in_log(void **state)
{
    struct harness *h = *state;
    char path[] = "/tmp/hamr-auth-log-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    unlink(path); /* gone even if an assertion below fails; fd keeps it */
    fflush(stderr);
    int saved = dup(STDERR_FILENO);
    assert_true(saved >= 0);
    assert_true(dup2(fd, STDERR_FILENO) >= 0);

    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "secret-alice"));
    h->s = smtpd_session_free(h->s);
    test_reset_io(h);
    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "Wr0ngHorseBattery"));
    test_send(h, "AUTH LOGIN\r\nYWxpY2U=\r\nTG9naW5TZWNyZXQ=\r\n"); /* "LoginSecret" */
    test_send(h, "AUTH PLAIN\r\n*\r\n");

    fflush(stderr);
    assert_true(dup2(saved, STDERR_FILENO) >= 0);
    close(saved);
    char log[16384];
    ssize_t n = pread(fd, log, sizeof(log) - 1, 0);
    close(fd);
    assert_true(n > 0);
    log[n] = '\0';
    assert_non_null(strstr(log, "auth ok client=192.0.2.7 user=alice"));
    assert_non_null(strstr(log, "auth failed client=192.0.2.7 user=alice failures=1"));
    assert_non_null(strstr(log, "auth aborted"));
    static const char *const secrets[] = {
        "secret-alice", "Wr0ngHorseBattery", "LoginSecret", "TG9naW5TZWNyZXQ",
        "c2VjcmV0",     "AGFsaWNl",          "YWxpY2U",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(secrets); i++)
        if (strstr(log, secrets[i]) != NULL)
            fail_msg("secret \"%s\" in the log:\n%s", secrets[i], log);
}

/* ------------------------------------------------------------------ */
/* The asynchronous check (io.auth_check)                              */
/* ------------------------------------------------------------------ */

/* test_answer - the pending check calls back with what the real table says. */
static void test_answer(struct harness *h)
{
    struct fake_check *c = &h->io.check;
    void (*done)(void *, int) = c->done;
    assert_non_null(done);
    c->done = NULL;
    int rc = smtpd_auth_verify(c->auth, c->user, strlen(c->user), c->pass, strlen(c->pass));
    done(c->arg, rc);
}

/* test_async_pending - AUTH waits for the check; pipelined commands wait behind it. */
static void test_async_pending(void **state)
{
    struct harness *h = *state;
    h->async = true;
    test_tls_ehlo(h);
    assert_int_equal(h->io.base.timer_ms, 300000);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_send(h, "MAIL FROM:<a@example.org>\r\nNOOP\r\n");
    test_expect(h, "");
    assert_true(smtpd_session_auth_pending(h->s));
    assert_int_equal(h->io.check.calls, 1);
    assert_string_equal(h->io.check.user, "alice");
    assert_string_equal(h->io.check.pass, "secret-alice");
    assert_ptr_equal(h->io.check.auth, h->auth);
    assert_true(h->io.base.paused);
    assert_int_equal(h->io.base.timer_ms, 0);
    assert_int_equal(smtpd_session_timeout_ms(h->s), 0);
    smtpd_session_timeout(h->s); /* a stale timer: ignored while the check runs */
    test_send(h, "RSET\r\n");    /* still held */
    test_expect(h, "");
    assert_int_equal(h->io.base.closes, 0);

    test_answer(h);
    test_expect(h,
                "235 2.7.0 Authentication successful\r\n250 2.1.0 Ok\r\n250 2.0.0 Ok\r\n"
                "250 2.0.0 Ok\r\n");
    assert_false(smtpd_session_auth_pending(h->s));
    assert_false(h->io.base.paused);
    assert_int_equal(h->io.base.timer_ms, 300000);
    /* Authenticated: relaying is allowed now. */
    test_send(h, "MAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\n");
    test_expect(h, "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
}

/*
 * test_auth_rate - over the client's AUTH rate: 450 4.7.1 for PLAIN (with
 * and without an initial response) and LOGIN, no 334, no password check,
 * no auth failure; each 450 is an error; other commands go on; once the
 * rate allows it AUTH succeeds. AUTH refused earlier (before TLS, before
 * EHLO) is not counted.
 */
static void test_auth_rate(void **state)
{
    struct harness *h = *state;
    static const char refused[] = "450 4.7.1 Error: too many AUTH commands from 192.0.2.7\r\n";
    h->async = true;
    h->policy.max_errors = 7;
    h->policy.auth_max_failures = 1;

    test_start(h, true);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_send(h, "EHLO client.example\r\n");
    test_take(h);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "530 5.7.0 Must issue a STARTTLS command first\r\n");
    assert_int_equal(h->io.rate_calls, 0); /* order errors come first, uncounted */
    test_send(h, "STARTTLS\r\n");
    test_send(h, "EHLO client.example\r\n");
    test_take(h);

    h->io.rate_rc = HAMR_EBUSY;
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, refused);
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h, refused);
    test_send(h, "AUTH LOGIN\r\n");
    test_expect(h, refused);
    assert_int_equal(h->io.rate_calls, 3);
    assert_int_equal(h->io.check.calls, 0); /* no password check for a refused command */
    assert_false(smtpd_session_auth_pending(h->s));
    assert_int_equal(h->io.base.closes, 0); /* no 421 for auth failures: none happened */
    /* The session goes on; what follows is a command, not an AUTH response. */
    test_send(h, "NOOP\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<x@elsewhere.example>\r\n");
    test_expect(h,
                "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n"
                "554 5.7.1 <x@elsewhere.example>: Relay access denied\r\n");
    test_send(h, "RSET\r\n");
    test_take(h);

    h->io.rate_rc = 0;
    test_send(h, test_plain("", "alice", "secret-alice"));
    assert_int_equal(h->io.rate_calls, 4);
    assert_int_equal(h->io.check.calls, 1);
    test_answer(h);
    test_expect(h, "235 2.7.0 Authentication successful\r\n");
    /* 503 and 530 before TLS, three 450s and the 554 are six errors: one more is the seventh. */
    test_send(h, "AUTH PLAIN\r\n");
    test_expect(h,
                "503 5.5.1 Error: already authenticated\r\n"
                "421 4.7.0 mx.hamr.test Error: too many errors\r\n");
    assert_int_equal(h->io.rate_calls, 4); /* refused for order: not counted */
    assert_int_equal(h->io.base.closes, 1);
}

/* test_async_table - PLAIN and LOGIN, good and bad, through the asynchronous check. */
static void test_async_table(void **state)
{
    struct harness *h = *state;
    static const struct {
        const char *label;
        const char *send;   /* the whole exchange, pipelined */
        const char *before; /* replies before the check calls back */
        const char *user, *pass;
        const char *after; /* replies once it did */
    } cases[] = {
        {"plain good", NULL, "", "alice", "secret-alice",
         "235 2.7.0 Authentication successful\r\n"},
        {"plain bad", NULL, "", "alice", "secret-bob",
         "535 5.7.8 Error: authentication failed\r\n"},
        {"plain unknown", NULL, "", "carol", "x", "535 5.7.8 Error: authentication failed\r\n"},
        {"login good", "AUTH LOGIN\r\nYm9iQGhhbXIudGVzdA==\r\nYjBi\r\nNOOP\r\n",
         "334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n", "bob@hamr.test", "b0b",
         "235 2.7.0 Authentication successful\r\n250 2.0.0 Ok\r\n"},
        {"login bad", "AUTH LOGIN YWxpY2U=\r\nYjBi\r\nNOOP\r\n", "334 UGFzc3dvcmQ6\r\n", "alice",
         "b0b", "535 5.7.8 Error: authentication failed\r\n250 2.0.0 Ok\r\n"},
    };
    h->async = true;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        test_tls_ehlo(h);
        test_send(h, cases[i].send ? cases[i].send : test_plain("", cases[i].user, cases[i].pass));
        if (strcmp(test_take(h), cases[i].before) != 0)
            fail_msg("%s: before the check: \"%s\"", cases[i].label, h->io.base.last);
        assert_true(smtpd_session_auth_pending(h->s));
        assert_string_equal(h->io.check.user, cases[i].user);
        assert_string_equal(h->io.check.pass, cases[i].pass);
        test_answer(h);
        if (strcmp(test_take(h), cases[i].after) != 0)
            fail_msg("%s: after the check: \"%s\"", cases[i].label, h->io.base.last);
        assert_false(smtpd_session_auth_pending(h->s));
        assert_false(h->io.base.paused);
        h->s = smtpd_session_free(h->s);
        test_reset_io(h);
    }
}

/* test_async_refused - a check that cannot be queued is 454, and AUTH may be tried again. */
static void test_async_refused(void **state)
{
    struct harness *h = *state;
    h->async = true;
    test_tls_ehlo(h);
    h->io.check.refuse = HAMR_ENOMEM;
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "454 4.7.0 Temporary authentication failure\r\n");
    assert_false(smtpd_session_auth_pending(h->s));
    assert_false(h->io.base.paused);
    assert_int_equal(h->io.base.closes, 0);
    h->io.check.refuse = 0;
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_expect(h, "");
    test_answer(h);
    test_expect(h, "235 2.7.0 Authentication successful\r\n");
}

/* test_async_disconnect - the client leaves mid-check: the session lingers, then frees itself. */
static void test_async_disconnect(void **state)
{
    struct harness *h = *state;
    h->async = true;
    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_send(h, "NOOP\r\n");
    assert_true(smtpd_session_auth_pending(h->s));
    h->s = smtpd_session_free(h->s); /* the connection is gone */
    test_answer(h);                  /* frees the session; ASan reports a leak otherwise */
    test_expect(h, "");              /* and nothing is written to the old transport */

    /* The same for a failing check, after the session hung up on input overflow. */
    test_reset_io(h);
    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "wrong"));
    assert_true(smtpd_session_auth_pending(h->s));
    static char big[SMTPD_SESSION_INPUT_MAX + 2];
    memset(big, 'x', sizeof(big) - 1);
    test_send(h, big);
    test_expect(h, "421 4.7.0 mx.hamr.test Error: too much pipelined input\r\n");
    assert_int_equal(h->io.base.closes, 1);
    h->s = smtpd_session_free(h->s);
    test_answer(h);
    test_expect(h, "");
}

/* test_async_shutdown - the server closes mid-check: the AUTH reply first, then 421. */
static void test_async_shutdown(void **state)
{
    struct harness *h = *state;
    h->async = true;
    test_tls_ehlo(h);
    test_send(h, test_plain("", "alice", "secret-alice"));
    test_send(h, "NOOP\r\n");
    smtpd_session_shutdown(h->s);
    test_expect(h, "");
    assert_int_equal(h->io.base.closes, 0);
    test_answer(h);
    test_expect(h,
                "235 2.7.0 Authentication successful\r\n"
                "421 4.3.2 mx.hamr.test Service not available, shutting down\r\n");
    assert_int_equal(h->io.base.closes, 1);
    assert_int_equal(smtpd_session_state(h->s), SMTPD_STATE_CLOSING);
}

/* test_table_reference - a held table survives a reload and the free of its owner. */
static void test_table_reference(void **state)
{
    struct harness *h = *state;
    char dave[512], err[256];

    struct smtpd_auth_table *old = smtpd_auth_table_get(h->auth);
    test_cred_line(dave, sizeof(dave), "dave", "d4ve");
    test_write_file(h->path, dave);
    assert_int_equal(smtpd_auth_reload(h->auth, err, sizeof(err)), 0);
    struct smtpd_auth_table *cur = smtpd_auth_table_get(h->auth);
    h->auth = smtpd_auth_free(h->auth);
    h->policy.auth = NULL;
    assert_int_equal(smtpd_auth_table_verify(old, "alice", 5, "secret-alice", 12), 0);
    assert_int_equal(smtpd_auth_table_verify(old, "dave", 4, "d4ve", 4), HAMR_EPERM);
    assert_int_equal(smtpd_auth_table_verify(cur, "dave", 4, "d4ve", 4), 0);
    assert_int_equal(smtpd_auth_table_verify(cur, "alice", 5, "secret-alice", 12), HAMR_EPERM);
    smtpd_auth_table_put(old);
    smtpd_auth_table_put(cur); /* the last references: ASan sees a leak or double free */
    smtpd_auth_table_put(NULL);
}

int main(void)
{
    log_set_level(LOG_LEVEL_INFO);
#define T(name) cmocka_unit_test_setup_teardown(name, test_setup, test_teardown)
    const struct CMUnitTest tests[] = {
        T(test_base64),         T(test_file_lines),
        T(test_verify),         T(test_ehlo_offer),
        T(test_auth_replies),   T(test_relay_after_auth),
        T(test_three_failures), T(test_no_secret_in_log),
        T(test_async_pending),  T(test_async_table),
        T(test_async_refused),  T(test_async_disconnect),
        T(test_async_shutdown), T(test_table_reference),
        T(test_auth_rate),      T(test_unknown_user_cost),
    };
#undef T
    return cmocka_run_group_tests(tests, NULL, NULL);
}
