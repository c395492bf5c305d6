/*
 * test_cluster_tls.c - net/cluster_tls, the cluster PKI, on certificates
 * made per run by deploy/make-pki.sh; handshakes through net/tls engines
 * wired back to back (no sockets).
 *
 * Covers: a node's and an operator's identity from their certificates, and
 * their names ("node:1", "operator:alice"); a certificate of another CA, a
 * key that is not the certificate's, a missing file and a certificate with
 * no hamr name are refused with the file named;
 * mutual TLS 1.3 between two nodes, each seeing the other's id; a client
 * with no certificate, or one from another CA, fails the server's
 * handshake; days until expiry; notAfter of the certificate and the CA as
 * the files say (read here with OpenSSL alone), before and after a reload;
 * reload takes a new certificate, and a broken file on reload leaves the
 * old contexts in place.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "util/err.h"
#include "net/cluster_tls.h"
#include "net/tls.h"
#include "tests/lib/testlib_pki.h"
#include "tests/lib/testlib_tls.h"
#include "tls_testcert.h"

struct fixture {
    struct testlib_pki pki;   /* node 1, node 2, operator alice */
    struct testlib_pki other; /* another CA: node 2 */
    char p[12][512];
};

/* files - ca.pem, NAME.pem, NAME.key of pki into f->p[slot..slot+2]. */
static struct cluster_tls_files files(struct fixture *f,
                                      const struct testlib_pki *pki,
                                      const char *name,
                                      int slot)
{
    char n[96];
    testlib_pki_path(pki, "ca.pem", f->p[slot], sizeof(f->p[slot]));
    snprintf(n, sizeof(n), "%s.pem", name);
    testlib_pki_path(pki, n, f->p[slot + 1], sizeof(f->p[slot + 1]));
    snprintf(n, sizeof(n), "%s.key", name);
    testlib_pki_path(pki, n, f->p[slot + 2], sizeof(f->p[slot + 2]));
    return (struct cluster_tls_files){
        .ca = f->p[slot], .cert = f->p[slot + 1], .key = f->p[slot + 2]};
}

static int setup(void **state)
{
    static struct fixture f;
    memset(&f, 0, sizeof(f));
    if (!testlib_pki_init(&f.pki) || !testlib_pki_node(&f.pki, 1, 0) ||
        !testlib_pki_node(&f.pki, 2, 0) || !testlib_pki_operator(&f.pki, "alice") ||
        !testlib_pki_init(&f.other) || !testlib_pki_node(&f.other, 2, 0))
        return -1;
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    struct fixture *f = *state;
    testlib_pki_cleanup(&f->pki);
    testlib_pki_cleanup(&f->other);
    return 0;
}

/* handshake - the server's result. */
static int handshake(struct tls *cli, struct tls *srv)
{
    int src;
    (void)testlib_tls_handshake(cli, srv, &src);
    return src;
}

static struct cluster_tls *load(struct fixture *f, const struct testlib_pki *pki, const char *name)
{
    char err[512] = "";
    struct cluster_tls_files fl = files(f, pki, name, 0);
    struct cluster_tls *c = NULL;
    int rv = cluster_tls_new(&fl, &c, err, sizeof(err));
    if (rv != 0)
        fail_msg("cluster_tls_new %s: %s", name, err);
    return c;
}

/* test_identities - node and operator names as the certificates carry them. */
static void test_identities(void **state)
{
    struct fixture *f = *state;
    struct cluster_tls *n1 = load(f, &f->pki, "node-1");
    struct cluster_tls *op = load(f, &f->pki, "operator-alice");
    assert_int_equal(cluster_tls_self(n1)->role, CLUSTER_TLS_NODE);
    assert_int_equal(cluster_tls_self(n1)->node_id, 1);
    assert_int_equal(cluster_tls_self(op)->role, CLUSTER_TLS_OPERATOR);
    assert_string_equal(cluster_tls_self(op)->name, "alice");
    char name[CLUSTER_TLS_NAME_MAX + 16];
    assert_string_equal(cluster_tls_identity_name(cluster_tls_self(n1), name, sizeof(name)),
                        "node:1");
    assert_string_equal(cluster_tls_identity_name(cluster_tls_self(op), name, sizeof(name)),
                        "operator:alice");
    struct cluster_tls_identity none = {.role = CLUSTER_TLS_NONE, .node_id = 3};
    assert_string_equal(cluster_tls_identity_name(&none, name, sizeof(name)), "none");
    long days = cluster_tls_days_left(n1, false, time(NULL));
    assert_true(days == 824 || days == 825);
    assert_true(cluster_tls_days_left(n1, true, time(NULL)) >= 3649);
    assert_int_equal(cluster_tls_days_left(n1, false, time(NULL) + 825L * 86400 + 3600), -1);
    cluster_tls_free(n1);
    cluster_tls_free(op);
    assert_int_equal(ERR_peek_error(), 0);
}

/*
 * test_not_after - a 30-day node certificate: notAfter as the files say,
 * whole days counted down to the second it ends; a reload to a 10-day one
 * moves it.
 */
static void test_not_after(void **state)
{
    struct fixture *f = *state;
    char err[512];
    assert_true(testlib_pki_node(&f->pki, 3, 30));
    struct cluster_tls *n3 = load(f, &f->pki, "node-3");
    time_t begin = testlib_pki_time(&f->pki, "node-3.pem", false);
    time_t end = testlib_pki_time(&f->pki, "node-3.pem", true);
    assert_int_equal(end - begin, 30L * 86400);
    assert_int_equal(cluster_tls_not_after(n3, false), end);
    assert_int_equal(cluster_tls_not_after(n3, true), testlib_pki_time(&f->pki, "ca.pem", true));
    const struct {
        time_t now;
        long want;
    } cases[] = {
        {begin, 30}, {begin + 1, 29}, {end - 86400, 1}, {end - 1, 0}, {end, 0}, {end + 1, -1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        if (cluster_tls_days_left(n3, false, cases[i].now) != cases[i].want)
            fail_msg("now = notAfter %+lld s: %ld days left, want %ld",
                     (long long)(cases[i].now - end),
                     cluster_tls_days_left(n3, false, cases[i].now), cases[i].want);

    assert_true(testlib_pki_node(&f->pki, 3, 10));
    assert_int_equal(cluster_tls_reload(n3, err, sizeof(err)), 0);
    assert_int_equal(cluster_tls_not_after(n3, false),
                     testlib_pki_time(&f->pki, "node-3.pem", true));
    assert_int_equal(
        cluster_tls_not_after(n3, false) - testlib_pki_time(&f->pki, "node-3.pem", false),
        10L * 86400);
    assert_int_equal(cluster_tls_not_after(n3, true), testlib_pki_time(&f->pki, "ca.pem", true));
    cluster_tls_free(n3);
    assert_int_equal(ERR_peek_error(), 0);
}

/* test_refused_files - each bad combination is refused, the reason names the file. */
static void test_refused_files(void **state)
{
    struct fixture *f = *state;
    struct tls_testcert tc;
    assert_true(tls_testcert_init(&tc));
    struct cluster_tls_files good = files(f, &f->pki, "node-1", 0);
    struct cluster_tls_files node2 = files(f, &f->pki, "node-2", 3);
    struct cluster_tls_files foreign = files(f, &f->other, "node-2", 6);
    const struct {
        struct cluster_tls_files fl;
        const char *want;
    } cases[] = {
        {{good.ca, foreign.cert, foreign.key, 0}, "not valid under cluster CA"},
        {{good.ca, good.cert, node2.key, 0}, "does not match"},
        {{good.ca, "/nonexistent/node.pem", good.key, 0}, "/nonexistent/node.pem"},
        {{"/nonexistent/ca.pem", good.cert, good.key, 0}, "/nonexistent/ca.pem"},
        {{good.ca, good.cert, "", 0}, "needs a CA, a certificate and a key"},
        {{good.ca, node2.cert, node2.key, 1}, "is node 2's, not node 1's"},
        {{tc.ca_file, tc.cert_file, tc.key_file, 0}, "subjectAltName URI hamr:node:ID"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char err[512] = "";
        struct cluster_tls *c = NULL;
        assert_int_equal(cluster_tls_new(&cases[i].fl, &c, err, sizeof(err)), HAMR_EINVAL);
        assert_null(c);
        if (strstr(err, cases[i].want) == NULL)
            fail_msg("case %zu: \"%s\" lacks \"%s\"", i, err, cases[i].want);
    }
    tls_testcert_cleanup(&tc);
    assert_int_equal(ERR_peek_error(), 0);
}

/* test_mutual - two nodes see each other's id; strangers fail the server's handshake. */
static void test_mutual(void **state)
{
    struct fixture *f = *state;
    struct cluster_tls *n1 = load(f, &f->pki, "node-1");
    struct cluster_tls *n2 = load(f, &f->pki, "node-2");
    struct cluster_tls *stranger = load(f, &f->other, "node-2");
    struct tls *cli, *srv;
    struct cluster_tls_identity id;

    assert_int_equal(tls_new(cluster_tls_client_ctx(n2), false, NULL, false, &cli), 0);
    assert_int_equal(tls_new(cluster_tls_server_ctx(n1), true, NULL, false, &srv), 0);
    assert_int_equal(handshake(cli, srv), 1);
    assert_int_equal(cluster_tls_peer(srv, &id), 0);
    assert_int_equal(id.role, CLUSTER_TLS_NODE);
    assert_int_equal(id.node_id, 2);
    assert_int_equal(cluster_tls_peer(cli, &id), 0);
    assert_int_equal(id.node_id, 1);
    char desc[96];
    tls_describe(srv, desc, sizeof(desc));
    assert_non_null(strstr(desc, "TLSv1.3"));
    assert_non_null(strstr(desc, "TLS_AES_128_GCM_SHA256")); /* the cheapest suite first */
    tls_free(cli);
    tls_free(srv);

    /* Another CA's certificate for the same id. */
    assert_int_equal(tls_new(cluster_tls_client_ctx(stranger), false, NULL, false, &cli), 0);
    assert_int_equal(tls_new(cluster_tls_server_ctx(n1), true, NULL, false, &srv), 0);
    assert_int_equal(handshake(cli, srv), HAMR_EPROTO);
    assert_int_equal(cluster_tls_peer(srv, &id), -1);
    tls_free(cli);
    tls_free(srv);

    /* No certificate at all. */
    char err[256];
    SSL_CTX *bare = tls_client_ctx_new(f->p[0], err, sizeof(err));
    assert_non_null(bare);
    assert_int_equal(tls_new(bare, false, NULL, false, &cli), 0);
    SSL_CTX_free(bare);
    assert_int_equal(tls_new(cluster_tls_server_ctx(n1), true, NULL, false, &srv), 0);
    assert_int_equal(handshake(cli, srv), HAMR_EPROTO);
    assert_int_equal(cluster_tls_peer(srv, &id), -1);
    tls_free(cli);
    tls_free(srv);

    cluster_tls_free(n1);
    cluster_tls_free(n2);
    cluster_tls_free(stranger);
    ERR_clear_error();
}

/* test_reload - a new certificate in place of the old; a broken one changes nothing. */
static void test_reload(void **state)
{
    struct fixture *f = *state;
    char err[512];
    struct cluster_tls *n1 = load(f, &f->pki, "node-1");
    struct cluster_tls *n2 = load(f, &f->pki, "node-2");
    /* A connection opened before the reload keeps working after it. */
    struct tls *cli, *srv;
    assert_int_equal(tls_new(cluster_tls_client_ctx(n2), false, NULL, false, &cli), 0);
    assert_int_equal(tls_new(cluster_tls_server_ctx(n1), true, NULL, false, &srv), 0);
    assert_int_equal(handshake(cli, srv), 1);

    assert_true(testlib_pki_node(&f->pki, 1, 10));
    assert_int_equal(cluster_tls_reload(n1, err, sizeof(err)), 0);
    assert_int_equal(cluster_tls_reloads(n1), 1);
    long days = cluster_tls_days_left(n1, false, time(NULL));
    assert_true(days == 9 || days == 10);

    char buf[16];
    assert_int_equal(tls_write(cli, "ping", 4), 0);
    testlib_tls_pump(cli, srv);
    assert_int_equal(tls_read(srv, buf, sizeof(buf)), 4);
    tls_free(cli);
    tls_free(srv);

    /* Half-written key during rotation: the reload fails, the 10-day certificate stays. */
    char keyfile[512];
    testlib_pki_path(&f->pki, "node-1.key", keyfile, sizeof(keyfile));
    FILE *fp = fopen(keyfile, "w");
    assert_non_null(fp);
    fputs("-----BEGIN PRIVATE KEY-----\nMIGH\n", fp);
    fclose(fp);
    assert_int_equal(cluster_tls_reload(n1, err, sizeof(err)), HAMR_EINVAL);
    assert_non_null(strstr(err, keyfile));
    assert_int_equal(cluster_tls_reloads(n1), 1);
    assert_true(cluster_tls_days_left(n1, false, time(NULL)) <= 10);
    assert_int_equal(tls_new(cluster_tls_client_ctx(n2), false, NULL, false, &cli), 0);
    assert_int_equal(tls_new(cluster_tls_server_ctx(n1), true, NULL, false, &srv), 0);
    assert_int_equal(handshake(cli, srv), 1);
    tls_free(cli);
    tls_free(srv);
    assert_true(testlib_pki_node(&f->pki, 1, 0)); /* whole again for the other tests */
    cluster_tls_free(n1);
    cluster_tls_free(n2);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_identities),    cmocka_unit_test(test_not_after),
        cmocka_unit_test(test_refused_files), cmocka_unit_test(test_mutual),
        cmocka_unit_test(test_reload),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
