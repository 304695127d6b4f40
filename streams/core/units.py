"""Constants of Bitcoin's proof of work and of time that every part of hashatlas shares."""

#: Expected hashes per unit of share or block difficulty (difficulty 1 is a 2^32 hash target).
HASHES_PER_DIFFICULTY = 2.0**32
SECONDS_PER_DAY = 86400.0
