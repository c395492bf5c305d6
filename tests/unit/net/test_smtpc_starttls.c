/*
 * test_smtpc_starttls.c - outbound STARTTLS of the SMTP client pool against a
 * scripted SMTP server on the same libuv loop (127.0.0.1, port 0) that can
 * offer STARTTLS and speak TLS through the memory-BIO engine, with a CA and
 * a certificate for localhost/127.0.0.1 made per run (tls_testcert.h).
 *
 * Covers: may with STARTTLS offered uses TLS and the message arrives; may
 * without STARTTLS goes plaintext; encrypt without STARTTLS defers and the
 * server never sees MAIL; verify against an unknown CA, and against a wrong
 * name, defers; verify with the right CA and name (or IP literal) is OK and
 * "verified"; plaintext injected after the 220 to STARTTLS is not taken as a
 * reply; a refused STARTTLS and a handshake timeout defer; only the EHLO
 * list after TLS counts; a reused connection keeps TLS; deliveries under
 * different policies do not share a connection; without a TLS client
 * context may goes plaintext and encrypt defers. DANE, through a fake
 * resolver whose target carries TLSA records: DANE-EE 3 1 1 of the
 * certificate's key (and DANE-TA 2 0 1 of the CA) delivers "dane-verified"
 * whatever the name; a mismatch, or no STARTTLS, defers without MAIL; a
 * target without TLSA under dane goes on as may; dane-only without a DANE
 * target defers without connecting. REQUIRETLS (RFC 8689) under any
 * policy: no STARTTLS, an unverified certificate, or no REQUIRETLS in the
 * EHLO list after TLS fails for good with 5.7.30 and no MAIL; a verified
 * next hop (PKIX, or a matching TLSA record) that offers it gets "MAIL ...
 * REQUIRETLS"; an MX route that was not DNSSEC-validated fails it with
 * 5.7.30 before any connection unless MTA-STS patterns came with the
 * delivery, and other mail to that domain goes on. Every case also
 * checks the result's tls_state.
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

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <uv.h>

#include "util/common.h"
#include "util/err.h"
#include "util/log.h"
#include "net/smtpc.h"
#include "net/tls.h"
#include "tests/lib/testlib_loop.h"
#include "tests/lib/testlib_nexthop.h"
#include "tests/lib/testlib_resolver.h"
#include "tests/lib/testlib_smtpc.h"
#include "tls_testcert.h"

/* The next hop's EHLO replies: STARTTLS offered, not offered, and inside TLS. */
static const char ehlo_offer[] =
    "250-test.example\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 SIZE 1000000\r\n";
static const char ehlo_no_tls[] = "250-test.example\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n";
static const char ehlo_after_tls[] = "250-test.example\r\n250-PIPELINING\r\n250 SIZE 1000000\r\n";

/* ------------------------------------------------------------------------ */
/* Fixture                                                                  */
/* ------------------------------------------------------------------------ */

/* The certificates and the server context, made once for the whole run. */
static struct tls_testcert certs, other_certs;
static SSL_CTX *server_ctx;

struct result {
    int calls;
    struct smtpc_rcpt_result r;
    char tls[96];
    enum smtpc_tls_state tls_state;
};

static int group_setup(void **state)
{
    (void)state;
    if (!tls_testcert_init(&certs) || !tls_testcert_init(&other_certs))
        return -1;
    server_ctx = tls_testcert_server_ctx(&certs);
    return server_ctx != NULL ? 0 : -1;
}

static int group_teardown(void **state)
{
    (void)state;
    SSL_CTX_free(server_ctx);
    tls_testcert_cleanup(&certs);
    tls_testcert_cleanup(&other_certs);
    return 0;
}

/* setup - the client fixture against a next hop that speaks STARTTLS. */
static int setup(void **state)
{
    struct testlib_smtpc *f = testlib_smtpc_new(server_ctx);
    f->srv.ehlo = ehlo_offer;
    f->srv.ehlo_tls = ehlo_after_tls;
    hamr_strlcpy(f->cfg.tls_ca_file, certs.ca_file, sizeof(f->cfg.tls_ca_file));
    *state = f;
    return 0;
}

static void done_cb(void *arg, const struct smtpc_result *res)
{
    struct result *r = arg;
    r->calls++;
    assert_int_equal(res->n_rcpts, 1);
    r->r = res->rcpts[0];
    hamr_strlcpy(r->tls, res->tls, sizeof(r->tls));
    r->tls_state = res->tls_state;
}

static const char *const rcpt1[] = {"a@x.test"};
static const char body[] = "Subject: t\r\n\r\nhello\r\n";
static const struct smtpc_msg msg = {.sender = "s@y.test",
                                     .rcpts = rcpt1,
                                     .n_rcpts = 1,
                                     .body = (const uint8_t *)body,
                                     .body_len = sizeof(body) - 1};

/* srv_no_starttls - the next hop neither lists STARTTLS nor accepts it (503). */
static void srv_no_starttls(struct testlib_smtpc *f)
{
    f->srv.offer_starttls = false;
    f->srv.ehlo = ehlo_no_tls;
}

/* deliver_wait - one delivery under policy, run until its callback. */
static void deliver_wait(struct testlib_smtpc *f,
                         enum smtpc_tls_policy policy,
                         const char *verify_host,
                         struct result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "127.0.0.1", f->srv.port, policy, verify_host,
                                            &msg, done_cb, r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r->calls == 1);
}

/* ends_with - does s end in suffix? */
static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

/*
 * assert_tls_ok - delivered over TLS; the description ends in suffix, and
 * the state says the same (" verified" or " unverified").
 */
static void assert_tls_ok(const struct testlib_smtpc *f, const struct result *r, const char *suffix)
{
    assert_int_equal(r->r.status, SMTPC_OK);
    assert_int_equal(r->r.code, 250);
    assert_true(strncmp(r->tls, "TLSv1.", 6) == 0);
    assert_true(ends_with(r->tls, suffix));
    assert_int_equal(r->tls_state, strcmp(suffix, " verified") == 0 ? SMTPC_TLS_STATE_VERIFIED
                                                                    : SMTPC_TLS_STATE_UNVERIFIED);
    assert_int_equal(f->srv.n_mail_plain, 0);
    assert_true(f->srv.n_mail_tls >= 1);
}

/* assert_deferred - SMTPC_TEMP with why in the text, and no MAIL ever seen. */
static void assert_deferred(const struct testlib_smtpc *f, const struct result *r, const char *why)
{
    assert_int_equal(r->r.status, SMTPC_TEMP);
    if (strstr(r->r.text, why) == NULL)
        fail_msg("text \"%s\" lacks \"%s\"", r->r.text, why);
    assert_int_equal(f->srv.n_mail_plain + f->srv.n_mail_tls, 0);
    assert_int_equal(f->srv.n_messages, 0);
}

/* ------------------------------------------------------------------------ */
/* Tests                                                                    */
/* ------------------------------------------------------------------------ */

static void test_may_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_messages, 1);
    assert_int_equal(f->srv.n_starttls, 1);
    assert_int_equal(f->srv.n_tls_up, 1);
}

static void test_may_not_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    srv_no_starttls(f);
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED);
    assert_int_equal(f->srv.n_starttls, 0);
    assert_int_equal(f->srv.n_mail_plain, 1);
    assert_int_equal(f->srv.n_messages, 1);
}

/* Neither encrypt nor verify ever sends MAIL when STARTTLS is missing. */
static void test_required_not_offered(void **state)
{
    static const enum smtpc_tls_policy policies[] = {SMTPC_TLS_ENCRYPT, SMTPC_TLS_VERIFY};
    struct testlib_smtpc *f = *state;
    srv_no_starttls(f);
    testlib_smtpc_pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(policies); i++) {
        struct result r;
        deliver_wait(f, policies[i], "localhost", &r);
        assert_deferred(f, &r, "TLS required but not offered");
        assert_string_equal(r.tls, "none");
        assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED);
    }
    assert_int_equal(f->srv.n_starttls, 0);
}

static void test_encrypt_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    /* No verification: even a CA that has nothing to do with the server will do. */
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
}

static void test_verify_unknown_ca(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r);
    assert_deferred(f, &r, "TLS required but failed");
    assert_non_null(strstr(r.r.text, "certificate verify failed"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

/* verify_case - a verify_host and whether the certificate matches it. */
struct verify_case {
    const char *verify_host;
    bool ok;
};

/*
 * assert_verify_outcome - under VERIFY, ok: delivered over verified TLS,
 * one MAIL more than mails_before; else deferred on the certificate check
 * with no MAIL.
 */
static void assert_verify_outcome(const struct testlib_smtpc *f,
                                  const struct result *r,
                                  bool ok,
                                  unsigned mails_before)
{
    if (ok) {
        assert_tls_ok(f, r, " verified");
        assert_false(ends_with(r->tls, "unverified"));
        assert_int_equal(f->srv.n_mail_tls, mails_before + 1);
    } else {
        assert_int_equal(r->r.status, SMTPC_TEMP);
        assert_non_null(strstr(r->r.text, "certificate verify failed"));
        assert_int_equal(r->tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
        assert_int_equal(f->srv.n_mail_tls, mails_before);
    }
}

static void test_verify_names(void **state)
{
    static const struct verify_case cases[] = {
        {"localhost", true},      /* DNS name in the certificate */
        {NULL, true},             /* the host itself: IP literal 127.0.0.1 */
        {"127.0.0.1", true},      /* the IP, given explicitly */
        {"mx.other.test", false}, /* not in the certificate */
        {"127.0.0.2", false},     /* another IP */
    };
    struct testlib_smtpc *f = *state;
    testlib_smtpc_pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        struct result r;
        unsigned mails_before = f->srv.n_mail_tls;
        deliver_wait(f, SMTPC_TLS_VERIFY, cases[i].verify_host, &r);
        assert_verify_outcome(f, &r, cases[i].ok, mails_before);
    }
    assert_int_equal(f->srv.n_mail_plain, 0);
}

/* target_name_case - the target's host (from the resolver), the verify_host, the outcome. */
struct target_name_case {
    const char *target_host;
    const char *verify_host;
    bool ok;
};

/*
 * test_verify_target_host - through a resolver, with no verify_host the
 * certificate must name the target's host (the MX host), not the next hop;
 * a verify_host given still wins.
 */
static void test_verify_target_host(void **state)
{
    static const struct target_name_case cases[] = {
        {"localhost", NULL, true},             /* in the certificate */
        {"localhost", "", true},               /* "" is NULL */
        {"mx.other.test", NULL, false},        /* not in it */
        {"mx.other.test", "localhost", true},  /* the caller's name wins */
        {"localhost", "mx.other.test", false}, /* ... both ways */
    };
    struct testlib_smtpc *f = *state;
    struct testlib_resolver *fr = testlib_resolver_new(&f->loop);
    f->cfg.resolver = &fr->r;
    testlib_smtpc_pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        print_message("case %s %s\n", cases[i].target_host,
                      cases[i].verify_host ? cases[i].verify_host : "NULL");
        fr->route.n = 0;
        testlib_resolver_add(fr, cases[i].target_host, "127.0.0.1", f->srv.port);
        struct result r = {0};
        unsigned mails_before = f->srv.n_mail_tls;
        assert_int_equal(
            smtpc_pool_deliver_tls(f->pool, "example.test", f->srv.port, SMTPC_TLS_VERIFY,
                                   cases[i].verify_host, &msg, done_cb, &r),
            0);
        TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
        assert_verify_outcome(f, &r, cases[i].ok, mails_before);
        /* Each case its own connection: a pooled one would skip the resolver. */
        smtpc_pool_close(f->pool, testlib_smtpc_pool_closed_cb, f);
        TESTLIB_LOOP_UNTIL(&f->run, f->pool_closed);
        f->pool_closed = false;
        testlib_smtpc_pool_start(f);
    }
    assert_int_equal(fr->calls, (int)HAMR_ARRAY_LEN(cases));
    assert_int_equal(f->srv.n_mail_plain, 0);
    testlib_resolver_close(fr); /* the pool of the fixture resolves nothing more */
}

/* A reply pushed behind the 220 to STARTTLS is thrown away, not read as the EHLO reply. */
static void test_injection_after_220(void **state)
{
    static const char *const injected[] = {
        "220 ready\r\n250 2.1.0 injected\r\n",
        "220 ready\r\n250-test.example\r\n250 PIPELINING\r\n",
        "220 ready\r\n\x16\x03\x01garbage",
    };
    for (size_t i = 0; i < HAMR_ARRAY_LEN(injected); i++) {
        void *st = NULL;
        assert_int_equal(setup(&st), 0);
        struct testlib_smtpc *f = st;
        struct result r;
        f->srv.starttls_reply = injected[i];
        testlib_smtpc_pool_start(f);
        deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
        assert_tls_ok(f, &r, " unverified");
        assert_int_equal(f->srv.n_messages, 1);
        assert_int_equal(testlib_smtpc_teardown(&st), 0);
    }
    (void)state;
}

static void test_starttls_refused(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    f->srv.starttls_reply = "454 4.7.0 TLS not available\r\n";
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_deferred(f, &r, "TLS handshake failed");
    assert_int_equal(r.r.code, 454);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

static void test_handshake_timeout(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    f->srv.stall_handshake = true;
    f->cfg.command_timeout_ms = 200;
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_deferred(f, &r, "TLS required but failed");
    assert_non_null(strstr(r.r.text, "timeout"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
}

/*
 * No TLS client context (its CA file cannot be read) though STARTTLS is
 * offered: may goes on in plaintext, encrypt defers before MAIL.
 */
static void test_no_client_ctx(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    hamr_strlcpy(f->cfg.tls_ca_file, "/nonexistent/hamr-ca.pem", sizeof(f->cfg.tls_ca_file));
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_deferred(f, &r, "TLS required but no TLS client context");
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CLIENT_CTX);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CLIENT_CTX);
    assert_int_equal(f->srv.n_starttls, 0);
    assert_int_equal(f->srv.n_mail_plain, 1);
}

/* The EHLO list from before TLS is forgotten: its SIZE 10 would refuse the message. */
static void test_second_ehlo_counts(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    f->srv.ehlo = "250-test.example\r\n250-STARTTLS\r\n250 SIZE 10\r\n";
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_messages, 1);
}

static void test_reuse_keeps_tls(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r1, r2;
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r1);
    assert_tls_ok(f, &r1, " verified");
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r2);
    assert_tls_ok(f, &r2, " verified");
    assert_int_equal(f->srv.n_accepted, 1);
    assert_int_equal(f->srv.n_starttls, 1);
    assert_int_equal(f->srv.n_mail_tls, 2);
    assert_int_equal(f->srv.n_messages, 2);
}

/* One idle connection per policy (and per verify name): never shared across them. */
static void test_policies_not_shared(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_accepted, 1);
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_accepted, 2);
    deliver_wait(f, SMTPC_TLS_VERIFY, "localhost", &r);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(f->srv.n_accepted, 3);
    deliver_wait(f, SMTPC_TLS_VERIFY, "127.0.0.1", &r);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(f->srv.n_accepted, 4);
    /* The same policy again reuses its own connection. */
    deliver_wait(f, SMTPC_TLS_ENCRYPT, NULL, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_int_equal(f->srv.n_accepted, 4);
    assert_int_equal(f->srv.n_messages, 5);
}

/* ------------------------------------------------------------------------ */
/* DANE                                                                     */
/* ------------------------------------------------------------------------ */

/*
 * dane_fixture - the STARTTLS next hop reached through a fake resolver,
 * whose one target ("mx.dane.test" at 127.0.0.1) the test marks for DANE.
 */
struct dane_fixture {
    struct testlib_smtpc *f;
    struct testlib_resolver *fr;
};

static int setup_dane(void **state)
{
    struct dane_fixture *df = calloc(1, sizeof(*df));
    assert_non_null(df);
    df->f = testlib_smtpc_new(server_ctx);
    df->f->srv.ehlo = ehlo_offer;
    df->f->srv.ehlo_tls = ehlo_after_tls;
    df->fr = testlib_resolver_new(&df->f->loop);
    df->f->cfg.resolver = &df->fr->r;
    testlib_resolver_add(df->fr, "mx.dane.test", "127.0.0.1", df->f->srv.port);
    *state = df;
    return 0;
}

static int teardown_dane(void **state)
{
    struct dane_fixture *df = *state;
    testlib_resolver_close(df->fr); /* freed by the loop, after the pool's close */
    testlib_smtpc_free(df->f);
    free(df);
    *state = NULL;
    return 0;
}

/*
 * dane_digest - SHA-256 of the first certificate in file (PEM): of its
 * SubjectPublicKeyInfo (selector 1) or of the whole certificate (0).
 */
static void dane_digest(const char *file, uint8_t selector, uint8_t out[32])
{
    FILE *fp = fopen(file, "r");
    assert_non_null(fp);
    X509 *x = PEM_read_X509(fp, NULL, NULL, NULL);
    fclose(fp);
    assert_non_null(x);
    unsigned char *der = NULL;
    int len = selector == 1 ? i2d_X509_PUBKEY(X509_get_X509_PUBKEY(x), &der) : i2d_X509(x, &der);
    assert_true(len > 0);
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(der, (size_t)len, out, &n, EVP_sha256(), NULL), 1);
    assert_int_equal(n, 32);
    OPENSSL_free(der);
    X509_free(x);
}

/*
 * dane_target - the resolver's target carries one TLSA record: usage,
 * selector, matching type 1 (SHA-256) of the first certificate in file.
 */
static void dane_target(struct dane_fixture *df, uint8_t usage, uint8_t selector, const char *file)
{
    struct smtpc_target *t = &df->fr->t[0];
    t->dane = true;
    t->n_tlsa = 1;
    t->tlsa[0].usage = usage;
    t->tlsa[0].selector = selector;
    t->tlsa[0].mtype = 1;
    t->tlsa[0].len = 32;
    dane_digest(file, selector, t->tlsa[0].data);
}

/* dane_deliver - one delivery to "dane.test" under policy, until its callback. */
static void dane_deliver(struct dane_fixture *df, enum smtpc_tls_policy policy, struct result *r)
{
    struct testlib_smtpc *f = df->f;
    memset(r, 0, sizeof(*r));
    testlib_smtpc_pool_start(f);
    assert_int_equal(
        smtpc_pool_deliver_tls(f->pool, "dane.test", f->srv.port, policy, NULL, &msg, done_cb, r),
        0);
    TESTLIB_LOOP_UNTIL(&f->run, r->calls == 1);
}

/*
 * test_dane_ee_match - DANE-EE 3 1 1 of the server's key: delivered over
 * TLS, "dane-verified", although neither the name (mx.dane.test) nor the
 * CA (not in the pool's trust) would pass verify; the resolve asked for TLSA.
 */
static void test_dane_ee_match(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_target(df, 3, 1, certs.cert_file);
    df->f->cfg.tls_ca_file[0] = '\0';
    dane_deliver(df, SMTPC_TLS_DANE, &r);
    assert_true(df->fr->opts.dane);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_true(ends_with(r.tls, " dane-verified"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_VERIFIED);
    assert_int_equal(df->f->srv.n_mail_plain, 0);
    assert_int_equal(df->f->srv.n_mail_tls, 1);
    struct smtpc_stats st;
    smtpc_pool_get_stats(df->f->pool, &st);
    assert_int_equal(st.dane_verified, 1);
    assert_int_equal(st.dane_failed, 0);
}

/*
 * test_dane_ta_match - DANE-TA 2 0 1 of the CA certificate the server
 * sends in its chain; the leaf names the base domain. Then the same
 * record for a base domain the leaf does not name: deferred.
 */
static void test_dane_ta_match(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_target(df, 2, 0, certs.ca_file);
    df->f->cfg.tls_ca_file[0] = '\0';
    /* DANE-TA checks the leaf's name against the TLSA base domain (RFC 7672 3.2.2). */
    hamr_strlcpy(df->fr->t[0].host, "localhost", sizeof(df->fr->t[0].host));
    dane_deliver(df, SMTPC_TLS_DANE_ONLY, &r);
    if (r.r.status != SMTPC_OK)
        fail_msg("not delivered: %s", r.r.text);
    assert_true(ends_with(r.tls, " dane-verified"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_VERIFIED);
}

/* test_dane_mismatch - a record of another key: deferred, DANE_FAILED, the server never got MAIL.
 */
static void test_dane_mismatch(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_target(df, 3, 1, other_certs.cert_file);
    dane_deliver(df, SMTPC_TLS_DANE, &r);
    assert_deferred(df->f, &r, "DANE");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_DANE_FAILED);
    assert_string_equal(r.tls, "none");
    struct smtpc_stats st;
    smtpc_pool_get_stats(df->f->pool, &st);
    assert_int_equal(st.dane_verified, 0);
    assert_int_equal(st.dane_failed, 1);
}

/* test_dane_not_offered - a DANE target without STARTTLS: deferred, no MAIL, no plaintext. */
static void test_dane_not_offered(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_target(df, 3, 1, certs.cert_file);
    srv_no_starttls(df->f);
    dane_deliver(df, SMTPC_TLS_DANE, &r);
    assert_deferred(df->f, &r, "STARTTLS not offered");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_DANE_FAILED);
}

/* test_dane_no_tlsa - dane, a target without TLSA records: as may, plaintext without STARTTLS. */
static void test_dane_no_tlsa(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    srv_no_starttls(df->f);
    dane_deliver(df, SMTPC_TLS_DANE, &r);
    assert_true(df->fr->opts.dane);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_string_equal(r.tls, "none");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED);
    assert_int_equal(df->f->srv.n_mail_plain, 1);
}

/* test_dane_no_tlsa_offered - dane, no TLSA, STARTTLS offered: opportunistic TLS, unverified. */
static void test_dane_no_tlsa_offered(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_deliver(df, SMTPC_TLS_DANE, &r);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_true(ends_with(r.tls, " unverified"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_UNVERIFIED);
}

/* test_dane_only_no_tlsa - dane-only, no target with TLSA records: deferred before connecting. */
static void test_dane_only_no_tlsa(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_deliver(df, SMTPC_TLS_DANE_ONLY, &r);
    assert_int_equal(r.r.status, SMTPC_TEMP);
    assert_true(strstr(r.r.text, "4.7.5") != NULL);
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_DANE_UNUSABLE);
    assert_int_equal(df->f->srv.n_accepted, 0);
}

/* test_may_no_dane_opts - a policy without DANE resolves without asking for TLSA. */
static void test_may_no_dane_opts(void **state)
{
    struct dane_fixture *df = *state;
    struct result r;
    dane_target(df, 3, 1, other_certs.cert_file); /* ignored: not a DANE policy */
    dane_deliver(df, SMTPC_TLS_MAY, &r);
    assert_false(df->fr->opts.dane);
    assert_int_equal(r.r.status, SMTPC_OK);
    assert_true(ends_with(r.tls, " unverified"));
}

static void test_policy_names(void **state)
{
    static const struct {
        const char *text;
        int rv;
        enum smtpc_tls_policy policy;
    } cases[] = {
        {"may", 0, SMTPC_TLS_MAY},
        {"encrypt", 0, SMTPC_TLS_ENCRYPT},
        {"verify", 0, SMTPC_TLS_VERIFY},
        {"VERIFY", 0, SMTPC_TLS_VERIFY},
        {"dane", 0, SMTPC_TLS_DANE},
        {"dane-only", 0, SMTPC_TLS_DANE_ONLY},
        {"DANE-Only", 0, SMTPC_TLS_DANE_ONLY},
        {"dane-", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"none", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"mayx", HAMR_EINVAL, SMTPC_TLS_MAY},
        {"encryp", HAMR_EINVAL, SMTPC_TLS_MAY},
    };
    (void)state;
    for (size_t i = 0; i < HAMR_ARRAY_LEN(cases); i++) {
        enum smtpc_tls_policy p = SMTPC_TLS_MAY;
        assert_int_equal(smtpc_tls_policy_parse(cases[i].text, &p), cases[i].rv);
        assert_int_equal(p, cases[i].policy);
        if (cases[i].rv == 0)
            assert_true(hamr_strncaseeq(smtpc_tls_policy_name(p), cases[i].text,
                                        strlen(cases[i].text) + 1));
    }
}

/*
 * test_chunking_over_tls - CHUNKING offered inside TLS only: the body goes
 * by BDAT through the TLS engine, as it is; the EHLO before TLS did not
 * offer it.
 */
static void test_chunking_over_tls(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    f->srv.ehlo_tls = "250-test.example\r\n250-PIPELINING\r\n250 CHUNKING\r\n";
    testlib_smtpc_pool_start(f);
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_bdat, 1);
    assert_int_equal(f->srv.bdat_body.len, sizeof(body) - 1);
    assert_memory_equal(f->srv.bdat_body.data, body, sizeof(body) - 1);
    assert_int_equal(f->srv.n_messages, 1);
}

/* ------------------------------------------------------------------------ */
/* REQUIRETLS (RFC 8689)                                                    */
/* ------------------------------------------------------------------------ */

/* The next hop's EHLO reply inside TLS when it offers REQUIRETLS. */
static const char ehlo_requiretls[] =
    "250-test.example\r\n250-PIPELINING\r\n250-REQUIRETLS\r\n250 SIZE 1000000\r\n";

static const struct smtpc_msg msg_requiretls = {.sender = "s@y.test",
                                                .rcpts = rcpt1,
                                                .n_rcpts = 1,
                                                .body = (const uint8_t *)body,
                                                .body_len = sizeof(body) - 1,
                                                .requiretls = true};

/* requiretls_wait - msg_requiretls to the test server under policy, until its callback. */
static void requiretls_wait(struct testlib_smtpc *f, enum smtpc_tls_policy policy, struct result *r)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "127.0.0.1", f->srv.port, policy, NULL,
                                            &msg_requiretls, done_cb, r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r->calls == 1);
}

/* assert_requiretls_failed - 5.7.30 for good, no reply code, why in the text, no MAIL. */
static void assert_requiretls_failed(const struct testlib_smtpc *f,
                                     const struct result *r,
                                     const char *why)
{
    static const char prefix[] = "5.7.30 REQUIRETLS support required, but ";
    assert_int_equal(r->r.status, SMTPC_PERM);
    assert_int_equal(r->r.code, 0);
    assert_false(r->r.dsn_passed);
    if (strncmp(r->r.text, prefix, sizeof(prefix) - 1) != 0 || strstr(r->r.text, why) == NULL)
        fail_msg("text \"%s\" is not \"%s...%s\"", r->r.text, prefix, why);
    assert_int_equal(f->srv.n_mail_plain + f->srv.n_mail_tls, 0);
    assert_int_equal(f->srv.n_messages, 0);
}

/* test_requiretls_plaintext - no STARTTLS, under may and encrypt alike: 5.7.30 before MAIL. */
static void test_requiretls_plaintext(void **state)
{
    static const enum smtpc_tls_policy policies[] = {SMTPC_TLS_MAY, SMTPC_TLS_ENCRYPT,
                                                     SMTPC_TLS_VERIFY};
    struct testlib_smtpc *f = *state;
    srv_no_starttls(f);
    testlib_smtpc_pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(policies); i++) {
        struct result r;
        requiretls_wait(f, policies[i], &r);
        assert_requiretls_failed(f, &r, "STARTTLS was not offered by host 127.0.0.1[127.0.0.1]");
        assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NOT_OFFERED_REQUIRED);
    }
    assert_int_equal(f->srv.n_starttls, 0);
}

/* test_requiretls_unverified - may, and a certificate of an unknown CA: checked all the same. */
static void test_requiretls_unverified(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    f->srv.ehlo_tls = ehlo_requiretls;
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    testlib_smtpc_pool_start(f);
    requiretls_wait(f, SMTPC_TLS_MAY, &r);
    assert_requiretls_failed(f, &r, "TLS failed with host 127.0.0.1[127.0.0.1]: ");
    assert_non_null(strstr(r.r.text, "certificate verify failed"));
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_HANDSHAKE_FAILED);
    /* The same message without REQUIRETLS goes on under may, unverified. */
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
}

/* test_requiretls_not_offered - verified TLS, but no REQUIRETLS after STARTTLS: 5.7.30. */
static void test_requiretls_not_offered(void **state)
{
    struct testlib_smtpc *f = *state;
    struct result r;
    /* Before TLS it does not count (RFC 3207 4.2). */
    f->srv.ehlo = "250-test.example\r\n250-STARTTLS\r\n250 REQUIRETLS\r\n";
    testlib_smtpc_pool_start(f);
    requiretls_wait(f, SMTPC_TLS_MAY, &r);
    assert_requiretls_failed(f, &r, "but was not offered by host 127.0.0.1[127.0.0.1]");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_VERIFIED);
    assert_int_equal(f->srv.n_tls_up, 1);
}

/*
 * test_requiretls_ok - may and encrypt are checked as verify; a verified
 * next hop that offers REQUIRETLS gets "MAIL ... REQUIRETLS" over TLS. A
 * message without REQUIRETLS never shares that connection.
 */
static void test_requiretls_ok(void **state)
{
    static const enum smtpc_tls_policy policies[] = {SMTPC_TLS_MAY, SMTPC_TLS_ENCRYPT,
                                                     SMTPC_TLS_VERIFY};
    struct testlib_smtpc *f = *state;
    f->srv.ehlo_tls = ehlo_requiretls;
    testlib_smtpc_pool_start(f);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(policies); i++) {
        struct result r;
        requiretls_wait(f, policies[i], &r);
        assert_tls_ok(f, &r, " verified");
        assert_int_equal(f->srv.n_mail_tls, i + 1);
    }
    char want[128];
    snprintf(want, sizeof(want), "MAIL FROM:<s@y.test> SIZE=%zu REQUIRETLS\r\n", sizeof(body) - 1);
    assert_true(testlib_nexthop_received(&f->srv, want));
    assert_int_equal(f->srv.n_messages, 3);
    assert_int_equal(f->srv.n_accepted, 3); /* one connection per policy */
    struct result r;
    deliver_wait(f, SMTPC_TLS_MAY, NULL, &r);
    assert_tls_ok(f, &r, " unverified");
    assert_int_equal(f->srv.n_accepted, 4);
}

/*
 * test_requiretls_dane - under dane, a target with a matching TLSA record
 * is verified by it (name and CA unchecked) and takes REQUIRETLS mail.
 */
static void test_requiretls_dane(void **state)
{
    struct dane_fixture *df = *state;
    struct testlib_smtpc *f = df->f;
    struct result r = {0};
    dane_target(df, 3, 1, certs.cert_file);
    f->cfg.tls_ca_file[0] = '\0';
    f->srv.ehlo_tls = ehlo_requiretls;
    testlib_smtpc_pool_start(f);
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "dane.test", f->srv.port, SMTPC_TLS_DANE, NULL,
                                            &msg_requiretls, done_cb, &r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    if (r.r.status != SMTPC_OK)
        fail_msg("not delivered: %s", r.r.text);
    assert_true(ends_with(r.tls, " dane-verified"));
    assert_true(testlib_nexthop_received(&f->srv, "REQUIRETLS\r\n"));
}

/*
 * test_requiretls_dane_no_tlsa - under dane, a target without TLSA records
 * (may for other mail) needs a certificate that passes PKIX for REQUIRETLS.
 */
static void test_requiretls_dane_no_tlsa(void **state)
{
    struct dane_fixture *df = *state;
    struct testlib_smtpc *f = df->f;
    struct result r = {0};
    hamr_strlcpy(f->cfg.tls_ca_file, other_certs.ca_file, sizeof(f->cfg.tls_ca_file));
    f->srv.ehlo_tls = ehlo_requiretls;
    testlib_smtpc_pool_start(f);
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "dane.test", f->srv.port, SMTPC_TLS_DANE, NULL,
                                            &msg_requiretls, done_cb, &r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_requiretls_failed(f, &r, "certificate verify failed");
}

/*
 * mx_insecure_resolver - a fake resolver on f whose route to the one
 * target "localhost" (named in the certificate) at the test server came
 * from an MX lookup nothing protected.
 */
static struct testlib_resolver *mx_insecure_resolver(struct testlib_smtpc *f)
{
    struct testlib_resolver *fr = testlib_resolver_new(&f->loop);
    testlib_resolver_add(fr, "localhost", "127.0.0.1", f->srv.port);
    fr->route.mx_secure = false;
    f->cfg.resolver = &fr->r;
    return fr;
}

/*
 * test_requiretls_mx_insecure - the MX records were not validated and no
 * MTA-STS policy filtered them (RFC 8689 4.2.1): 5.7.30 without a
 * connection. Mail without REQUIRETLS to that domain is not affected.
 */
static void test_requiretls_mx_insecure(void **state)
{
    struct testlib_smtpc *f = *state;
    struct testlib_resolver *fr = mx_insecure_resolver(f);
    struct result r = {0};
    f->srv.ehlo_tls = ehlo_requiretls;
    testlib_smtpc_pool_start(f);
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "example.test", f->srv.port, SMTPC_TLS_VERIFY,
                                            NULL, &msg_requiretls, done_cb, &r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_requiretls_failed(f, &r,
                             "the MX records of example.test are not DNSSEC-validated and no "
                             "MTA-STS policy covers them");
    assert_int_equal(r.tls_state, SMTPC_TLS_STATE_NO_CONNECTION);
    assert_int_equal(fr->calls, 1);
    assert_int_equal(f->srv.n_accepted, 0);

    memset(&r, 0, sizeof(r));
    assert_int_equal(smtpc_pool_deliver_tls(f->pool, "example.test", f->srv.port, SMTPC_TLS_VERIFY,
                                            NULL, &msg, done_cb, &r),
                     0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(fr->calls, 2);
    assert_false(testlib_nexthop_received(&f->srv, "REQUIRETLS\r\n"));
    testlib_resolver_close(fr); /* the pool of the fixture resolves nothing more */
}

/*
 * test_requiretls_mx_sts - the same unvalidated MX, but the delivery keeps
 * to MTA-STS enforce patterns: the MX hosts are covered, the TLS checks
 * follow, and a verified next hop that offers REQUIRETLS takes the mail.
 */
static void test_requiretls_mx_sts(void **state)
{
    static const char *const patterns[] = {"localhost"};
    struct testlib_smtpc *f = *state;
    struct testlib_resolver *fr = mx_insecure_resolver(f);
    struct result r = {0};
    f->srv.ehlo_tls = ehlo_requiretls;
    testlib_smtpc_pool_start(f);
    struct smtpc_delivery dv = {.host = "example.test",
                                .port = f->srv.port,
                                .policy = SMTPC_TLS_VERIFY,
                                .mx_patterns = patterns,
                                .n_mx_patterns = 1};
    assert_int_equal(smtpc_pool_deliver_to(f->pool, &dv, &msg_requiretls, done_cb, &r), 0);
    TESTLIB_LOOP_UNTIL(&f->run, r.calls == 1);
    if (r.r.status != SMTPC_OK)
        fail_msg("not delivered: %s", r.r.text);
    assert_tls_ok(f, &r, " verified");
    assert_int_equal(fr->opts.n_mx_patterns, 1);
    assert_true(testlib_nexthop_received(&f->srv, "REQUIRETLS\r\n"));
    testlib_resolver_close(fr); /* the pool of the fixture resolves nothing more */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_may_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_may_not_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_required_not_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_encrypt_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_verify_unknown_ca, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_verify_names, setup, testlib_smtpc_teardown),
        cmocka_unit_test(test_injection_after_220),
        cmocka_unit_test_setup_teardown(test_starttls_refused, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_no_client_ctx, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_handshake_timeout, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_second_ehlo_counts, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_reuse_keeps_tls, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_policies_not_shared, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_verify_target_host, setup, testlib_smtpc_teardown),
        cmocka_unit_test(test_policy_names),
        cmocka_unit_test_setup_teardown(test_dane_ee_match, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_ta_match, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_mismatch, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_not_offered, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_no_tlsa, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_no_tlsa_offered, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_dane_only_no_tlsa, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_may_no_dane_opts, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_chunking_over_tls, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_plaintext, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_unverified, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_not_offered, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_ok, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_dane, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_requiretls_dane_no_tlsa, setup_dane, teardown_dane),
        cmocka_unit_test_setup_teardown(test_requiretls_mx_insecure, setup, testlib_smtpc_teardown),
        cmocka_unit_test_setup_teardown(test_requiretls_mx_sts, setup, testlib_smtpc_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
