/*
 * test_tls.c - net/tls, the memory-BIO TLS engine, without
 * sockets: a client engine and a server engine are wired back to back by
 * moving ciphertext between their BIOs a bounded number of rounds.
 *
 * Covers: a handshake with a verifying client (test CA file, host name
 * localhost) and plaintext both ways; a CA the server's chain does not lead
 * to, and a wrong host name, fail with "certificate verify failed"; a
 * client context without verification still encrypts; a server context
 * refuses a TLS 1.1-only client; close_notify reads as HAMR_ESHUTDOWN;
 * the describe text; a missing CA file is an error naming it; OpenSSL's
 * error queue is left empty.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "util/err.h"
#include "net/tls.h"
#include "net/smtpd_tls.h"
#include "tests/lib/testlib_tls.h"
#include "tls_testcert.h"

struct fixture {
    struct tls_testcert tc, other;
    SSL_CTX *sctx;
};

static int setup(void **state)
{
    static struct fixture f;
    char err[512];
    if (!tls_testcert_init(&f.tc) || !tls_testcert_init(&f.other))
        return -1;
    f.sctx = smtpd_tls_ctx_new(f.tc.cert_file, f.tc.key_file, err, sizeof(err));
    if (f.sctx == NULL)
        return -1;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    SSL_CTX_free(f->sctx);
    tls_testcert_cleanup(&f->tc);
    tls_testcert_cleanup(&f->other);
    return 0;
}

/* test_verify_table - CA file and host name decide; plaintext flows both ways when they match. */
static void test_verify_table(void **state)
{
    struct fixture *f = *state;
    const struct {
        bool right_ca;
        const char *host;
        bool verify;
        int want;
        const char *describe_tail;
    } cases[] = {
        {true, "localhost", true, 1, " verified"},
        {true, "127.0.0.1", true, 1, " verified"},
        {false, "localhost", true, HAMR_EPROTO, NULL},
        {true, "mx.elsewhere.test", true, HAMR_EPROTO, NULL},
        {false, "localhost", false, 1, "_SHA384"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[512], desc[96], buf[64];
        SSL_CTX *cctx = tls_client_ctx_new(cases[i].right_ca ? f->tc.ca_file : f->other.ca_file,
                                           err, sizeof(err));
        assert_non_null(cctx);
        struct tls *cli, *srv;
        assert_int_equal(tls_new(cctx, false, cases[i].host, cases[i].verify, &cli), 0);
        SSL_CTX_free(cctx); /* the connection holds its own reference */
        assert_int_equal(tls_new(f->sctx, true, NULL, false, &srv), 0);
        int src;
        int crc = testlib_tls_handshake(cli, srv, &src);
        assert_int_equal(crc, cases[i].want);
        if (crc == 1) {
            assert_int_equal(src, 1);
            tls_describe(cli, desc, sizeof(desc));
            assert_non_null(strstr(desc, "TLSv1.3 TLS_"));
            assert_non_null(strstr(desc, cases[i].describe_tail));
            assert_int_equal(tls_write(cli, "EHLO x\r\n", 8), 0);
            testlib_tls_pump(cli, srv);
            assert_int_equal(tls_read(srv, buf, sizeof(buf)), 8);
            assert_memory_equal(buf, "EHLO x\r\n", 8);
            assert_int_equal(tls_read(srv, buf, sizeof(buf)), 0);
            assert_int_equal(tls_write(srv, "250 ok\r\n", 8), 0);
            testlib_tls_pump(srv, cli);
            assert_int_equal(tls_read(cli, buf, sizeof(buf)), 8);
            tls_shutdown(srv);
            testlib_tls_pump(srv, cli);
            assert_int_equal(tls_read(cli, buf, sizeof(buf)), HAMR_ESHUTDOWN);
        } else {
            assert_non_null(strstr(tls_error(cli), "certificate verify failed"));
        }
        cli = tls_free(cli);
        srv = tls_free(srv);
        assert_int_equal(ERR_peek_error(), 0);
    }
}

/* test_old_client_refused - the server context wants TLS 1.2 or later. */
static void test_old_client_refused(void **state)
{
    struct fixture *f = *state;
    SSL_CTX *cctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_security_level(cctx, 0);
    SSL_CTX_set_cipher_list(cctx, "DEFAULT:@SECLEVEL=0");
    SSL_CTX_set_min_proto_version(cctx, TLS1_VERSION);
    SSL_CTX_set_max_proto_version(cctx, TLS1_1_VERSION);
    struct tls *cli, *srv;
    assert_int_equal(tls_new(cctx, false, "localhost", false, &cli), 0);
    SSL_CTX_free(cctx);
    assert_int_equal(tls_new(f->sctx, true, NULL, false, &srv), 0);
    int src;
    (void)testlib_tls_handshake(cli, srv, &src);
    assert_int_equal(src, HAMR_EPROTO);
    assert_non_null(strstr(tls_error(srv), "unsupported protocol"));
    tls_free(cli);
    tls_free(srv);
    ERR_clear_error(); /* the client side may have queued its own alert error */
}

/* test_bad_ca_file - named in the error. */
static void test_bad_ca_file(void **state)
{
    char err[512];
    assert_null(tls_client_ctx_new("/nonexistent/ca.pem", err, sizeof(err)));
    assert_non_null(strstr(err, "tls_ca_file /nonexistent/ca.pem"));
    assert_int_equal(ERR_peek_error(), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_verify_table),
        cmocka_unit_test(test_old_client_refused),
        cmocka_unit_test(test_bad_ca_file),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
