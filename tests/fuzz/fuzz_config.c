/*
 * fuzz_config.c - libFuzzer target for the node configuration parser
 * (node/config: config_load over libinih, the value parsers, config_route).
 *
 * Input: the whole file. config_load takes a path, so the bytes go into an
 * in-memory file (memfd_create) opened through /proc/self/fd/N: no disk,
 * nothing left behind. The first line is also given to each exported value
 * parser (duration, size, host:port, CIDR).
 *
 * Properties checked:
 *   - config_load returns 0, HAMR_EINVAL or HAMR_EIO; on error the message
 *     is "PATH:LINE: reason", printable, and cfg holds no allocations;
 *   - on success the required keys are set, lists are within their arrays,
 *     the policy points at cfg's own arrays, and config_route answers for
 *     any recipient;
 *   - the value parsers return 0 or HAMR_EINVAL.
 *
 * Security note: the file is trusted operator input, but a typo must give
 * an error, never a crash (and the parsers take values from hamrctl too).
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include "util/common.h"
#include "util/err.h"
#include "node/config.h"
#include "fuzz_common.h"

static int fuzz_config_fd = -1;
static char fuzz_config_path[64];
static struct hamr_config fuzz_config_cfg; /* large: not on the stack */

static const char *const fuzz_config_rcpts[] = {
    "user@example.org", "user@sub.example.org", "USER@EXAMPLE.ORG.", "noat", "", "a@", "@b",
    "x@[127.0.0.1]"};

/* LLVMFuzzerInitialize - the in-memory file and quiet logs. */
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fuzz_log_setup();
    fuzz_config_fd = memfd_create("hamr-fuzz-config", 0);
    FUZZ_CHECK(fuzz_config_fd >= 0);
    snprintf(fuzz_config_path, sizeof(fuzz_config_path), "/proc/self/fd/%d", fuzz_config_fd);
    return 0;
}

/* fuzz_config_values - the first line through each exported value parser. */
static void fuzz_config_values(const uint8_t *data, size_t size)
{
    char line[512];
    size_t n = 0;
    while (n < size && n < sizeof(line) - 1 && data[n] != '\n' && data[n] != '\0')
        n++;
    memcpy(line, data, n);
    line[n] = '\0';

    uint64_t v;
    struct config_hostport hp;
    struct smtpd_cidr c;
    int rv = config_parse_duration(line, &v);
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL);
    rv = config_parse_size(line, &v);
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL);
    rv = config_parse_hostport(line, &hp);
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL);
    if (rv == 0)
        FUZZ_CHECK(memchr(hp.host, '\0', sizeof(hp.host)) != NULL);
    rv = config_parse_cidr(line, &c);
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL);
    if (rv == 0)
        FUZZ_CHECK(c.prefix <= (c.family == AF_INET ? 32u : 128u));
}

/* LLVMFuzzerTestOneInput - one configuration file. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct hamr_config *cfg = &fuzz_config_cfg;
    char err[1024];

    fuzz_config_values(data, size);

    FUZZ_CHECK(ftruncate(fuzz_config_fd, 0) == 0);
    FUZZ_CHECK(pwrite(fuzz_config_fd, data, size, 0) == (ssize_t)size);
    memset(cfg, 0xa5, sizeof(*cfg)); /* config_load must not read what it did not set */
    int rv = config_load(cfg, fuzz_config_path, err, sizeof(err));
    FUZZ_CHECK(rv == 0 || rv == HAMR_EINVAL || rv == HAMR_EIO);
    if (rv != 0) {
        size_t plen = strlen(fuzz_config_path);
        FUZZ_CHECK(strncmp(err, fuzz_config_path, plen) == 0 && err[plen] == ':');
        FUZZ_CHECK(fuzz_is_printable(err, strlen(err)));
        FUZZ_CHECK(cfg->n_relay_domains == 0);
        return 0;
    }
    FUZZ_CHECK(err[0] == '\0');
    FUZZ_CHECK(cfg->node_id > 0);
    FUZZ_CHECK(cfg->data_dir[0] != '\0');
    FUZZ_CHECK(cfg->n_voters <= CONSENSUS_MAX_MEMBERS);
    FUZZ_CHECK(cfg->n_relay_networks <= HAMR_ARRAY_LEN(cfg->relay_networks));
    FUZZ_CHECK(cfg->n_relay_domains <= HAMR_ARRAY_LEN(cfg->relay_domains));
    FUZZ_CHECK(cfg->n_transports <= CONFIG_MAX_TRANSPORTS);
    FUZZ_CHECK(cfg->smtpd.relay_networks == cfg->relay_networks);
    FUZZ_CHECK(cfg->smtpd.n_relay_domains == cfg->n_relay_domains);
    FUZZ_CHECK(cfg->heartbeat_ms < cfg->election_timeout_ms);
    FUZZ_CHECK(cfg->retry_min_ms <= cfg->retry_max_ms);
    for (size_t i = 0; i < cfg->n_relay_domains; i++)
        FUZZ_CHECK(cfg->relay_domains[i] != NULL);
    for (size_t i = 0; i < HAMR_ARRAY_LEN(fuzz_config_rcpts); i++) {
        struct config_hostport hp;
        rv = config_route(cfg, fuzz_config_rcpts[i], &hp);
        FUZZ_CHECK(rv == 0 || rv == HAMR_ENOTFOUND);
        if (rv == 0)
            FUZZ_CHECK(hp.host[0] != '\0');
    }
    config_free(cfg);
    FUZZ_CHECK(cfg->n_relay_domains == 0);
    return 0;
}
