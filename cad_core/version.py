PACK_VERSION = "0.12.0"
# Bump when the on-disk layout of attribution/mask files changes incompatibly.
FORMAT_VERSION = 1
