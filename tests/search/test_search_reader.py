"""The read path on its own: what serving holds can read everything live behind the alias and change nothing."""

from __future__ import annotations

from lmindexer.search import SearchReader


def test_a_reader_reads_what_the_publisher_made_live_and_cannot_write(engine, make_backend, docs_factory):
    publisher = make_backend(engine)
    docs = docs_factory(25)
    live = publisher.publish_full(docs, "v1", "r1").index
    with SearchReader(publisher.config) as reader:
        assert reader.live_index() == live and reader.count() == 25
        assert reader.get(docs[3]["item_id"]) == docs[3]
        assert set(reader.get_many([docs[0]["item_id"], "missing"])) == {docs[0]["item_id"]}
        assert [info.name for info in reader.list_indexes() if info.live] == [live]
        # The publishing half is not there to call: no load, swap, prune or rollback through a reader.
        writes = ("publish_full", "publish_incremental", "swap_alias", "prune", "rollback", "install_template")
        assert [name for name in writes if hasattr(reader, name)] == []
