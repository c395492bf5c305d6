/* consensus_crc.h - libraft's log checksum, eight bytes at a time (see consensus_crc.c). */
#ifndef HAMR_CONSENSUS_CRC_H
#define HAMR_CONSENSUS_CRC_H

#include <stddef.h>

/* byteCrc32 - replaces libraft 0.15's byte-at-a-time version at link time. */
unsigned byteCrc32(const void *buf, size_t size, unsigned init);

/* consensus_crc_tables - the same value through the tables only (byteCrc32 on any CPU). */
unsigned consensus_crc_tables(const void *buf, size_t size, unsigned init);

/* raft_byte_crc32_reference - libraft's own byteCrc32, renamed when hamr's copy of libraft.a is made. */
unsigned raft_byte_crc32_reference(const void *buf, size_t size, unsigned init);

/* consensus_crc_check - 0 when byteCrc32 and libraft's own agree; -1 if not (do not open a log). */
int consensus_crc_check(void);

#endif
