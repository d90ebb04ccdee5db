"""Reads the tokenizer metadata of a GGUF file with the standard library only.

Test-side helper for the Hugging Face `tokenizers` oracle: it reads the vocabulary straight from the
file, independently of toga's C++ GGUF parser, so the oracle cannot inherit a toga parsing bug.
"""
import struct

_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?",
            10: "<Q", 11: "<q", 12: "<d"}


def _read_string(buf, pos):
    (n,) = struct.unpack_from("<Q", buf, pos)
    pos += 8
    return buf[pos:pos + n].decode("utf-8", errors="surrogateescape"), pos + n


def _read_value(buf, pos, vtype):
    if vtype == 8:
        return _read_string(buf, pos)
    if vtype == 9:
        (etype, count) = struct.unpack_from("<IQ", buf, pos)
        pos += 12
        if etype in _SCALARS:
            fmt = _SCALARS[etype]
            size = struct.calcsize(fmt)
            vals = list(struct.unpack_from("<%d%s" % (count, fmt[1]), buf, pos))
            return vals, pos + size * count
        out = []
        for _ in range(count):
            v, pos = _read_value(buf, pos, etype)
            out.append(v)
        return out, pos
    fmt = _SCALARS[vtype]
    (v,) = struct.unpack_from(fmt, buf, pos)
    return v, pos + struct.calcsize(fmt)


def read_metadata(path):
    with open(path, "rb") as f:
        head = f.read(24)
        magic, version, _n_tensors, n_kv = struct.unpack("<4sIQQ", head)
        if magic != b"GGUF" or version not in (2, 3):
            raise ValueError("%s: not a GGUF v2/v3 file" % path)
        # Metadata sits at the front; the tokenizer of a 50k vocabulary is a few MB.
        buf = head + f.read(64 << 20)
    pos = 24
    meta = {}
    for _ in range(n_kv):
        key, pos = _read_string(buf, pos)
        (vtype,) = struct.unpack_from("<I", buf, pos)
        pos += 4
        meta[key], pos = _read_value(buf, pos, vtype)
    return meta
