/* testlib_pki.c - a cluster PKI per test through deploy/make-pki.sh. See testlib_pki.h. */
#include "tests/lib/testlib_pki.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/pem.h>
#include <openssl/x509.h>

#include "net/cluster_tls.h"

#ifndef HAMR_SOURCE_DIR
#error "HAMR_SOURCE_DIR: the source tree, for deploy/make-pki.sh"
#endif

/* testlib_pki_run - the script with args; its output only when it fails. */
static bool testlib_pki_run(const struct testlib_pki *p, unsigned days, const char *args)
{
    char cmd[1024];
    char env[32] = "";
    if (days > 0)
        snprintf(env, sizeof(env), "HAMR_PKI_DAYS=%u ", days);
    snprintf(cmd, sizeof(cmd), "%s%s/deploy/make-pki.sh '%s' %s >/dev/null", env, HAMR_SOURCE_DIR,
             p->dir, args);
    int rc = system(cmd);
    if (rc != 0)
        fprintf(stderr, "testlib_pki: \"%s\" failed (%d)\n", cmd, rc);
    return rc == 0;
}

bool testlib_pki_init(struct testlib_pki *p)
{
    snprintf(p->dir, sizeof(p->dir), "/tmp/hamr-pki-XXXXXX");
    if (mkdtemp(p->dir) == NULL) {
        perror("testlib_pki: mkdtemp");
        p->dir[0] = '\0';
        return false;
    }
    return testlib_pki_run(p, 0, "ca");
}

bool testlib_pki_node(struct testlib_pki *p, uint64_t id, unsigned days)
{
    char args[64];
    char name[64];
    char path[512];
    snprintf(name, sizeof(name), "node-%" PRIu64, id);
    /* A new certificate for the same node replaces the old one (rotation). */
    snprintf(path, sizeof(path), "%s/%s.pem", p->dir, name);
    unlink(path);
    snprintf(path, sizeof(path), "%s/%s.key", p->dir, name);
    unlink(path);
    snprintf(args, sizeof(args), "node %" PRIu64, id);
    return testlib_pki_run(p, days, args);
}

bool testlib_pki_operator(struct testlib_pki *p, const char *name)
{
    char args[128];
    snprintf(args, sizeof(args), "operator '%s'", name);
    return testlib_pki_run(p, 0, args);
}

const char *testlib_pki_path(const struct testlib_pki *p, const char *name, char *out, size_t len)
{
    snprintf(out, len, "%s/%s", p->dir, name);
    return out;
}

time_t testlib_pki_time(const struct testlib_pki *p, const char *name, bool not_after)
{
    char path[512];
    FILE *fp = fopen(testlib_pki_path(p, name, path, sizeof(path)), "r");
    X509 *x = fp != NULL ? PEM_read_X509(fp, NULL, NULL, NULL) : NULL;
    if (fp != NULL)
        fclose(fp);
    struct tm tm;
    const ASN1_TIME *t = x == NULL   ? NULL
                         : not_after ? X509_get0_notAfter(x)
                                     : X509_get0_notBefore(x);
    time_t v = t != NULL && ASN1_TIME_to_tm(t, &tm) == 1 ? timegm(&tm) : 0;
    X509_free(x);
    if (v == 0)
        fprintf(stderr, "testlib_pki: no certificate time in %s\n", path);
    return v;
}

void testlib_pki_cleanup(struct testlib_pki *p)
{
    if (p->dir[0] == '\0')
        return;
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", p->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "testlib_pki: could not remove %s\n", p->dir);
    p->dir[0] = '\0';
}

bool testlib_pki_operators(struct testlib_pki *p,
                           struct testlib_pki *other,
                           const char *name,
                           char *both_ca,
                           size_t len)
{
    if (!testlib_pki_init(p) || !testlib_pki_node(p, 1, 0) || !testlib_pki_operator(p, name) ||
        !testlib_pki_init(other) || !testlib_pki_operator(other, "mallory"))
        return false;
    testlib_pki_path(p, "both-ca.pem", both_ca, len);
    char cmd[1024];
    snprintf(cmd, sizeof(cmd), "cat '%s/ca.pem' '%s/ca.pem' >'%s'", p->dir, other->dir, both_ca);
    return system(cmd) == 0;
}

struct cluster_tls *testlib_pki_load(const char *ca, const char *cert, const char *key)
{
    struct cluster_tls_files files = {.ca = ca, .cert = cert, .key = key};
    struct cluster_tls *c = NULL;
    char err[512];
    if (cluster_tls_new(&files, &c, err, sizeof(err)) != 0)
        fprintf(stderr, "cluster_tls_new: %s\n", err);
    return c;
}
