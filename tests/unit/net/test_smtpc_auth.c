/*
 * test_smtpc_auth.c - outbound SMTP AUTH: the credentials file
 * (net/smtpc_auth) and the client's AUTH dialogue (net/smtpc) against the
 * scripted next hop on the same libuv loop, which records every octet it
 * reads (decrypted inside TLS) and answers AUTH PLAIN and LOGIN.
 *
 * Covers, for the file: both next-hop forms, comments, a password with ':'
 * and spaces, case-insensitive hosts; each bad line named by FILE:LINE
 * with no password in the message; a file others may read refused; a
 * reload that fails keeps the old table. For the client: AUTH PLAIN after
 * STARTTLS with the right base64; LOGIN when PLAIN is not offered; 535
 * defers and no other address is tried; 454 defers; no AUTH offered
 * defers; no STARTTLS under may defers without the password (nor its
 * base64) on the wire; auth_plaintext sends it in clear; two users never
 * share a connection; bad credentials are refused by the call; and no log
 * line, at debug level, carries the password or its base64.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/ssl.h>
#include <uv.h>

#include "util/b64.h"
#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpc.h"
#include "net/smtpc_auth.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_nexthop.h"
#include "tests/lib/testlib_resolver.h"
#include "tests/lib/testlib_smtpc.h"
#include "tls_testcert.h"

/* ------------------------------------------------------------------------ */
/* The credentials file                                                     */
/* ------------------------------------------------------------------------ */

static char tmpdir[] = "/tmp/hamr_smtpc_auth_XXXXXX";

/* write_file - a file in tmpdir holding text, mode mode; its path into path. */
static void write_file(const char *name, const char *text, mode_t mode, char *path, size_t len)
{
    snprintf(path, len, "%s/%s", tmpdir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}

static void test_file_good(void **state)
{
    (void)state;
    char path[256], err[512];
    write_file("good",
               "# next hop            user:password\n"
               "\n"
               "[smtp.provider.example]:587   alice:s3cret\n"
               "  example.com:25\tbob:pass: with spaces  \r\n"
               "[192.0.2.1]:25 carol@example.com:x\n",
               0600, path, sizeof(path));
    struct smtpc_auth *a = NULL;
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), 0);
    assert_int_equal(smtpc_auth_count(a), 3);
    const char *u = NULL, *p = NULL;
    assert_int_equal(smtpc_auth_lookup(a, "[smtp.provider.example]:587", &u, &p), 0);
    assert_string_equal(u, "alice");
    assert_string_equal(p, "s3cret");
    assert_int_equal(smtpc_auth_lookup(a, "[SMTP.Provider.Example]:587", &u, &p), 0);
    assert_string_equal(u, "alice");
    assert_int_equal(smtpc_auth_lookup(a, "example.com:25", &u, &p), 0);
    assert_string_equal(u, "bob");
    assert_string_equal(p, "pass: with spaces");
    assert_int_equal(smtpc_auth_lookup(a, "[192.0.2.1]:25", &u, &p), 0);
    assert_string_equal(u, "carol@example.com");
    /* The key is the next hop as written: other ports and forms are other hops. */
    assert_int_equal(smtpc_auth_lookup(a, "[smtp.provider.example]:25", &u, &p), HAMR_ENOTFOUND);
    assert_int_equal(smtpc_auth_lookup(a, "smtp.provider.example:587", &u, &p), HAMR_ENOTFOUND);
    assert_int_equal(smtpc_auth_lookup(a, "[example.com]:25", &u, &p), HAMR_ENOTFOUND);
    a = smtpc_auth_free(a);
    assert_null(a);
    unlink(path);
}

static void test_file_bad_lines(void **state)
{
    (void)state;
    static const struct {
        const char *label;
        const char *text;
        const char *want; /* in the message, after "PATH" */
    } cases[] = {
        {"no credentials", "# c\n[h.example]:587\n", ":2: expected NEXTHOP USER:PASSWORD"},
        {"no port", "[h.example] u:secretpw\n", ":1: bad next hop"},
        {"port 0", "h.example:0 u:secretpw\n", ":1: bad next hop"},
        {"port too big", "h.example:65536 u:secretpw\n", ":1: bad next hop"},
        {"unclosed bracket", "[h.example:587 u:secretpw\n", ":1: bad next hop"},
        {"colon outside brackets", "h:x.example:587 u:secretpw\n", ":1: bad next hop"},
        {"no colon", "\n\n[h.example]:587 usersecretpw\n", ":3: expected USER:PASSWORD"},
        {"empty user", "[h.example]:587 :secretpw\n", ":1: bad user name"},
        {"empty password", "[h.example]:587 u:\n", ":1: bad password"},
        {"control in password", "[h.example]:587 u:secret\001pw\n", ":1: bad password"},
        {"twice", "[h.example]:587 u:secretpw\n[H.example]:587 v:secretpw\n",
         ":2: next hop listed twice"},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        char path[256], err[512] = "";
        write_file("bad", cases[i].text, 0600, path, sizeof(path));
        struct smtpc_auth *a = NULL;
        int rv = smtpc_auth_new(path, &a, err, sizeof(err));
        if (rv != HAMR_EINVAL || strncmp(err, path, strlen(path)) != 0 ||
            strstr(err, cases[i].want) == NULL)
            fail_msg("%s: rv %d err \"%s\", want \"%s\"", cases[i].label, rv, err, cases[i].want);
        assert_null(a);
        assert_null(strstr(err, "secret"));
        unlink(path);
    }
}

static void test_file_mode_and_missing(void **state)
{
    (void)state;
    char path[256], err[512];
    struct smtpc_auth *a = NULL;
    write_file("open", "[h.example]:587 u:pw\n", 0644, path, sizeof(path));
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), HAMR_EPERM);
    assert_non_null(strstr(err, ":0: "));
    assert_non_null(strstr(err, "0644"));
    assert_int_equal(chmod(path, 0602), 0); /* writable by others: refused as well */
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), HAMR_EPERM);
    assert_int_equal(chmod(path, 0640), 0); /* the group (e.g. hamr's) may read it */
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), 0);
    a = smtpc_auth_free(a);
    unlink(path);
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), HAMR_EIO);
    assert_non_null(strstr(err, ":0: "));
}

static void test_file_reload(void **state)
{
    (void)state;
    char path[256], err[512];
    struct smtpc_auth *a = NULL;
    const char *u = NULL, *p = NULL;
    write_file("reload", "[h.example]:587 u:old\n", 0600, path, sizeof(path));
    assert_int_equal(smtpc_auth_new(path, &a, err, sizeof(err)), 0);
    /* A bad file: the old table stays. */
    write_file("reload", "[h.example]:587 u:new\nbroken\n", 0600, path, sizeof(path));
    assert_int_equal(smtpc_auth_reload(a, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, ":2: "));
    assert_int_equal(smtpc_auth_lookup(a, "[h.example]:587", &u, &p), 0);
    assert_string_equal(p, "old");
    /* Readable by others: refused, the old table stays. */
    write_file("reload", "[h.example]:587 u:new\n", 0604, path, sizeof(path));
    assert_int_equal(smtpc_auth_reload(a, err, sizeof(err)), HAMR_EPERM);
    assert_int_equal(smtpc_auth_lookup(a, "[h.example]:587", &u, &p), 0);
    assert_string_equal(p, "old");
    /* A good one replaces it. */
    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(smtpc_auth_reload(a, err, sizeof(err)), 0);
    assert_int_equal(smtpc_auth_lookup(a, "[h.example]:587", &u, &p), 0);
    assert_string_equal(p, "new");
    smtpc_auth_free(a);
    unlink(path);
}

/* ------------------------------------------------------------------------ */
/* The client                                                               */
/* ------------------------------------------------------------------------ */

static const char ehlo_offer[] =
    "250-test.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 1000000\r\n";
static const char ehlo_plain_auth[] =
    "250-test.example\r\n250-AUTH PLAIN LOGIN\r\n250 SIZE 1000\r\n";
static const char ehlo_tls_plain[] =
    "250-test.example\r\n250-PIPELINING\r\n250-AUTH LOGIN PLAIN CRAM-MD5\r\n250 8BITMIME\r\n";
static const char ehlo_tls_login[] = "250-test.example\r\n250-AUTH=LOGIN\r\n250 8BITMIME\r\n";
static const char ehlo_tls_cram[] = "250-test.example\r\n250 AUTH CRAM-MD5\r\n";
static const char ehlo_tls_none[] = "250-test.example\r\n250 8BITMIME\r\n";

#define USER "alice"
#define PASS "s3cret-Pw"

static struct tls_testcert certs;
static SSL_CTX *server_ctx;

struct result {
    int calls;
    struct smtpc_rcpt_result r;
    enum smtpc_tls_state tls_state;
    unsigned n_tried;
};

/* The client fixture, and a resolver that gives the next hop two addresses (the same server). */
struct fixture {
    struct testlib_smtpc *f;
    struct testlib_resolver *fr;
};

static int group_setup(void **state)
{
    (void)state;
    if (mkdtemp(tmpdir) == NULL || !tls_testcert_init(&certs))
        return -1;
    server_ctx = tls_testcert_server_ctx(&certs);
    return server_ctx != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(server_ctx);
    tls_testcert_cleanup(&certs);
    rmdir(tmpdir);
    return 0;
}

static int setup(void **state)
{
    struct fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->f = testlib_smtpc_new(server_ctx);
    fx->f->srv.ehlo = ehlo_offer;
    fx->f->srv.ehlo_tls = ehlo_tls_plain;
    fx->f->srv.auth_user = USER;
    fx->f->srv.auth_pass = PASS;
    fx->fr = testlib_resolver_new(&fx->f->loop);
    fx->f->cfg.resolver = &fx->fr->r;
    testlib_resolver_add(fx->fr, "relay.test", "127.0.0.1", fx->f->srv.port);
    testlib_resolver_add(fx->fr, "relay.test", "127.0.0.1", fx->f->srv.port);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *fx = *state;
    testlib_resolver_close(fx->fr); /* freed by the loop, after the pool's close */
    testlib_smtpc_free(fx->f);
    free(fx);
    *state = NULL;
    return 0;
}

static void done_cb(void *arg, const struct smtpc_result *res)
{
    struct result *r = arg;
    r->calls++;
    assert_int_equal(res->n_rcpts, 1);
    r->r = res->rcpts[0];
    r->tls_state = res->tls_state;
    r->n_tried = res->n_tried;
}

static const char *const rcpt1[] = {"a@x.test"};
static const char body[] = "Subject: t\r\n\r\nhello\r\n";
static const struct smtpc_msg msg = {.sender = "s@y.test",
                                     .rcpts = rcpt1,
                                     .n_rcpts = 1,
                                     .body = (const uint8_t *)body,
                                     .body_len = sizeof(body) - 1};

/* deliver - start one delivery to "[relay.test]" as user with pass (NULL: none). */
static void deliver(struct fixture *fx, const char *user, const char *pass, struct result *r)
{
    struct testlib_smtpc *f = fx->f;
    memset(r, 0, sizeof(*r));
    struct smtpc_delivery dv = {.host = "[relay.test]",
                                .port = f->srv.port,
                                .policy = SMTPC_TLS_MAY,
                                .auth_user = user,
                                .auth_pass = pass};
    assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, &msg, done_cb, r), 0);
}

/* deliver_wait - one delivery as USER, run until its callback. */
static void deliver_wait(struct fixture *fx, struct result *r)
{
    if (fx->f->pool == NULL)
        testlib_smtpc_pool_start(fx->f);
    deliver(fx, USER, PASS, r);
    TESTLIB_LOOP_UNTIL(&fx->f->run, r->calls == 1);
}

/* plain_b64 - the base64 of the AUTH PLAIN message for USER and PASS. */
static void plain_b64(char *out, size_t len)
{
    static const char m[] = "\0" USER "\0" PASS;
    assert_int_equal(b64_encode((const uint8_t *)m, sizeof(m) - 1, out, len), 0);
}

/* b64_of - the base64 of s. */
static void b64_of(const char *s, char *out, size_t len)
{
    assert_int_equal(b64_encode((const uint8_t *)s, strlen(s), out, len), 0);
}

/* assert_secret_absent - neither the password nor any base64 of it is in what the server read. */
static void assert_secret_absent(const struct testlib_nexthop *s)
{
    char b[128];
    assert_false(testlib_nexthop_received(s, PASS));
    plain_b64(b, sizeof(b));
    assert_false(testlib_nexthop_received(s, b));
    b64_of(PASS, b, sizeof(b));
    assert_false(testlib_nexthop_received(s, b));
}

/* assert_deferred - SMTPC_TEMP with why in the text, and no MAIL seen. */
static void assert_deferred(const struct testlib_smtpc *f, const struct result *r, const char *why)
{
    assert_int_equal(r->r.status, SMTPC_TEMP);
    if (strstr(r->r.text, why) == NULL)
        fail_msg("text \"%s\" lacks \"%s\"", r->r.text, why);
    assert_int_equal(f->srv.n_mail_plain + f->srv.n_mail_tls, 0);
    assert_int_equal(f->srv.n_messages, 0);
}

static void test_plain_after_starttls(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    deliver_wait(fx, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_UNVERIFIED);
    assert_int_equal(f->srv.n_tls_up, 1);
    assert_int_equal(f->srv.n_auth, 1);
    assert_int_equal(f->srv.n_auth_clear, 0);
    assert_int_equal(f->srv.n_auth_ok, 1);
    assert_string_equal(f->srv.auth_mech, "PLAIN");
    assert_int_equal(f->srv.n_mail_tls, 1);
    assert_int_equal(f->srv.n_messages, 1);
    char b[128], line[200];
    plain_b64(b, sizeof(b));
    assert_string_equal(b, "AGFsaWNlAHMzY3JldC1Qdw==");
    snprintf(line, sizeof(line), "AUTH PLAIN %s\r\nMAIL FROM:<s@y.test>", b);
    assert_true(testlib_nexthop_received(&f->srv, line));
    /* A second message reuses the authenticated connection: no second AUTH. */
    deliver_wait(fx, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_auth, 1);
    assert_int_equal(f->srv.n_messages, 2);
}

static void test_login_fallback(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    f->srv.ehlo_tls = ehlo_tls_login;
    deliver_wait(fx, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(f->srv.auth_mech, "LOGIN");
    assert_int_equal(f->srv.n_auth_ok, 1);
    assert_int_equal(f->srv.n_auth_clear, 0);
    assert_true(testlib_nexthop_received(&f->srv, "AUTH LOGIN\r\nYWxpY2U=\r\nczNjcmV0LVB3\r\n"));
}

static void test_535_defers_no_next_address(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    f->srv.auth_pass = "another";
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "4.7.0 SASL authentication failed with 127.0.0.1:");
    assert_non_null(strstr(r.r.text, "535 5.7.8 Authentication credentials invalid"));
    assert_int_equal(r.r.code, 535);
    assert_int_equal(f->srv.n_auth, 1);
    /* The resolver gave two addresses: the second was not tried. */
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(r.n_tried, 1);
    /* LOGIN fails the same way. */
    f->srv.ehlo_tls = ehlo_tls_login;
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "SASL authentication failed");
    assert_int_equal(r.r.code, 535);
    assert_int_equal(f->srv.n_accepted, 2);
}

static void test_454_defers(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    testlib_nexthop_override(&f->srv, "AUTH", "454 4.7.0 Temporary authentication failure\r\n", 0);
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "SASL authentication failed");
    assert_int_equal(r.r.code, 454);
    assert_int_equal(f->srv.n_accepted, 1);
}

static void test_auth_not_offered(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    f->srv.ehlo_tls = ehlo_tls_none;
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "does not offer AUTH");
    assert_int_equal(f->srv.n_auth, 0);
    f->srv.ehlo_tls = ehlo_tls_cram;
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "offers no AUTH mechanism hamr supports");
    assert_int_equal(f->srv.n_auth, 0);
}

static void test_no_tls_defers(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    f->srv.offer_starttls = false;
    f->srv.ehlo = ehlo_plain_auth;
    deliver_wait(fx, &r);
    assert_deferred(f, &r, "4.7.0 TLS not available");
    assert_non_null(strstr(r.r.text, "AUTH would be sent in plaintext"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED);
    assert_int_equal(f->srv.n_auth, 0);
    assert_secret_absent(&f->srv);
    /* Without credentials the same next hop takes the mail in plaintext (may). */
    deliver(fx, NULL, NULL, &r);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_mail_plain, 1);
}

static void test_plaintext_allowed(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    f->srv.offer_starttls = false;
    f->srv.ehlo = ehlo_plain_auth;
    f->cfg.auth_plaintext = true;
    deliver_wait(fx, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_auth_clear, 1);
    assert_int_equal(f->srv.n_auth_ok, 1);
    char b[128];
    plain_b64(b, sizeof(b));
    assert_true(testlib_nexthop_received(&f->srv, b));
}

static void test_users_not_shared(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r1, r2, r3;
    testlib_smtpc_pool_start(f);
    deliver(fx, USER, PASS, &r1);
    TESTLIB_LOOP_UNTIL(&f->run, r1.calls == 1);
    assert_int_equal(r1.r.status, SMTPC_OK);
    /* The idle connection is alice's: bob gets his own, and is refused. */
    deliver(fx, "bob", PASS, &r2);
    TESTLIB_LOOP_UNTIL(&f->run, r2.calls == 1);
    assert_int_equal(r2.r.status, SMTPC_TEMP);
    assert_int_equal(r2.r.code, 535);
    /* Nor does a delivery without credentials ride on alice's connection. */
    deliver(fx, NULL, NULL, &r3);
    TESTLIB_LOOP_UNTIL(&f->run, r3.calls == 1);
    assert_int_equal(r3.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_accepted, 3);
    assert_int_equal(f->srv.n_auth, 2);
    assert_int_equal(f->srv.n_messages, 2);
}

static void test_bad_credentials_refused(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    testlib_smtpc_pool_start(f);
    static const struct {
        const char *user, *pass;
    } cases[] = {
        {USER, NULL}, {NULL, PASS}, {"", PASS}, {USER, ""}, {USER, "a\r\nMAIL"}, {"a\nb", PASS},
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct smtpc_delivery dv = {.host = "[relay.test]",
                                    .port = f->srv.port,
                                    .auth_user = cases[i].user,
                                    .auth_pass = cases[i].pass};
        assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, &msg, done_cb, &r), HAMR_EINVAL);
    }
}

/*
 * test_logs_masked - with stderr in a file and the log at debug level, a
 * PLAIN, a LOGIN and a refused AUTH: no line carries the password or the
 * base64 that holds it, and the AUTH commands show as "********".
 */
static void test_logs_masked(void **state)
{
    struct fixture *fx = *state;
    struct testlib_smtpc *f = fx->f;
    struct result r;
    char logpath[256];
    snprintf(logpath, sizeof(logpath), "%s/log", tmpdir);
    fflush(stderr);
    int saved = dup(2);
    FILE *lf = fopen(logpath, "w+");
    assert_true(saved >= 0 && lf != NULL);
    assert_true(dup2(fileno(lf), 2) >= 0);
    log_set_level(LOG_LEVEL_DEBUG);

    deliver_wait(fx, &r); /* PLAIN */
    assert_int_equal(r.r.status, SMTPC_OK);
    f->srv.ehlo_tls = ehlo_tls_login;
    struct smtpc_delivery dv = {
        .host = "[relay.test]", .port = f->srv.port, .auth_user = USER, .auth_pass = "wrong-Pw"};
    memset(&r, 0, sizeof(r));
    assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, &msg, done_cb, &r), 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1); /* LOGIN, refused */
    assert_int_equal(r.r.code, 535);
    dv.auth_pass = PASS;
    memset(&r, 0, sizeof(r));
    assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, &msg, done_cb, &r), 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1); /* LOGIN */
    assert_int_equal(r.r.status, SMTPC_OK);

    fflush(stderr);
    log_set_level(LOG_LEVEL_WARN);
    assert_true(dup2(saved, 2) >= 0);
    close(saved);
    fseek(lf, 0, SEEK_SET);
    static char text[1 << 20];
    size_t n = fread(text, 1, sizeof(text) - 1, lf);
    text[n] = '\0';
    fclose(lf);
    unlink(logpath);
    char b[128];
    assert_non_null(strstr(text, "AUTH PLAIN ********"));
    assert_non_null(strstr(text, "authenticated user=alice"));
    assert_null(strstr(text, PASS));
    assert_null(strstr(text, "wrong-Pw"));
    plain_b64(b, sizeof(b));
    assert_null(strstr(text, b));
    b64_of(PASS, b, sizeof(b));
    assert_null(strstr(text, b));
    b64_of("wrong-Pw", b, sizeof(b));
    assert_null(strstr(text, b));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_file_good),
        cmocka_unit_test(test_file_bad_lines),
        cmocka_unit_test(test_file_mode_and_missing),
        cmocka_unit_test(test_file_reload),
        cmocka_unit_test_setup_teardown(test_plain_after_starttls, setup, teardown),
        cmocka_unit_test_setup_teardown(test_login_fallback, setup, teardown),
        cmocka_unit_test_setup_teardown(test_535_defers_no_next_address, setup, teardown),
        cmocka_unit_test_setup_teardown(test_454_defers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_auth_not_offered, setup, teardown),
        cmocka_unit_test_setup_teardown(test_no_tls_defers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_plaintext_allowed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_users_not_shared, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_credentials_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_logs_masked, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
