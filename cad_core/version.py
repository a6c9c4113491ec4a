PACK_VERSION = "0.11.0"
# Bump when the on-disk layout of attribution/mask files changes incompatibly.
FORMAT_VERSION = 1
