# seqstore: numbers survive resets, are never reused, and cost one write per block.
import os

import seqstore


def _read(path):
    with open(path) as f:
        return int(f.read())


def test_fresh_store_counts_from_zero_and_reserves_a_block():
    s = seqstore.SeqStore("a.seq", block=100)
    assert [s.next() for _ in range(3)] == [0, 1, 2]
    assert _read("a.seq") == 100


def test_reset_skips_the_rest_of_the_block_never_reuses():
    s = seqstore.SeqStore("b.seq", block=10)
    used = [s.next() for _ in range(13)]
    assert _read("b.seq") == 20
    s2 = seqstore.SeqStore("b.seq", block=10)  # a reset: only the file survives
    n = s2.next()
    assert n == 20 and n > max(used)
    assert _read("b.seq") == 30


def test_one_write_per_block():
    s = seqstore.SeqStore("c.seq", block=50)
    for _ in range(49):
        s.next()
    assert _read("c.seq") == 50
    s.next()
    assert _read("c.seq") == 50
    s.next()
    assert _read("c.seq") == 100


def test_a_cut_between_temp_write_and_rename_loses_nothing():
    with open("d.seq", "w") as f:
        f.write("200")
    with open("d.seq.tmp", "w") as f:
        f.write("300")  # written, not yet renamed
    s = seqstore.SeqStore("d.seq")
    assert s.next() == 300
    assert _read("d.seq") == 400 and "d.seq.tmp" not in os.listdir()


def test_garbled_file_counts_as_empty():
    with open("e.seq", "w") as f:
        f.write("")
    assert seqstore.SeqStore("e.seq").next() == 0
