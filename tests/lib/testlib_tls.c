/* testlib_tls.c - TLS engines back to back. See testlib_tls.h. */
#include "tests/lib/testlib_tls.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

void testlib_tls_pump(struct tls *from, struct tls *to)
{
    const char *data;
    size_t n = tls_output(from, &data);
    if (n > 0) {
        assert_int_equal(tls_feed(to, data, n), 0);
        tls_output_done(from, n);
    }
}

int testlib_tls_handshake(struct tls *cli, struct tls *srv, int *srv_rc)
{
    int crc = 0, src = 0;
    for (int i = 0; i < TESTLIB_TLS_ROUNDS && (crc != 1 || src != 1); i++) {
        if (crc == 0)
            crc = tls_handshake(cli);
        testlib_tls_pump(cli, srv);
        if (src == 0)
            src = tls_handshake(srv);
        testlib_tls_pump(srv, cli);
        if (crc < 0 || src < 0)
            break;
    }
    *srv_rc = src;
    return crc;
}
