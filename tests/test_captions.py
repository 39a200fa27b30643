"""Tag classification and tag-to-caption synthesis."""

from __future__ import annotations

from musiccli.captions import (TagSet, article, classify_tags, join_and, synthesize_captions,
                               tagset_from_prefixed)


def test_required_examples():
    tags = TagSet(genres=["Electronic"], moods=["upbeat"], instruments=["synthesizer"])
    assert synthesize_captions(tags, "k")[0] == "An upbeat Electronic track featuring synthesizer"
    assert synthesize_captions(TagSet(moods=["calm"], instruments=["piano"]), "k")[0] == \
        "A calm piece featuring piano"


def test_lists_and_multiple_genres():
    assert join_and(["piano", "strings", "drums"]) == "piano, strings and drums"
    assert synthesize_captions(TagSet(instruments=["piano", "strings", "drums"]), "k")[0] == \
        "A piece featuring piano, strings and drums"
    assert synthesize_captions(TagSet(genres=["rock", "pop"]), "k")[0] == "A rock and pop track"


def test_articles():
    assert article("upbeat") == "an" and article("calm") == "a"
    assert article("R&B track") == "an" and article("EDM track") == "an" and article("DnB") == "a"
    assert article("hour-long") == "an" and article("ukulele") == "a" and article("euphoric") == "a"
    caps = synthesize_captions(TagSet(genres=["ambient"]), "k")
    assert caps[0] == "An ambient track"


def test_deterministic_distinct_and_varied():
    tags = TagSet(genres=["jazz"], moods=["relaxing"], instruments=["saxophone", "double bass"])
    one = synthesize_captions(tags, "track-1", n=5)
    assert one == synthesize_captions(tags, "track-1", n=5)
    assert len(one) == 5 and len(set(one)) == 5
    # Different keys pick different alternative phrasings (the canonical one stays).
    others = {tuple(synthesize_captions(tags, f"track-{i}", n=5)[1:]) for i in range(10)}
    assert len(others) > 3
    assert all(c[0].isupper() and "  " not in c for c in one)


def test_empty_and_n():
    assert synthesize_captions(TagSet(), "k") == []
    assert synthesize_captions(TagSet(genres=["rock"]), "k", n=0) == []
    assert len(synthesize_captions(TagSet(genres=["rock"], moods=["dark"]), "k", n=1)) == 1
    only_other = synthesize_captions(TagSet(other=["instrumental"]), "k", n=3)
    assert only_other and "instrumental" in only_other[0]


def test_classify_free_form_tags():
    ts = classify_tags(["Electronic", "upbeat", "Synth", "80s", "instrumental", "Hip-Hop", "piano", "electronic",
                        "Female Vocalist", "  ", "relaxing"])
    assert ts.genres == ["Electronic", "Hip-Hop"]
    assert ts.moods == ["upbeat", "relaxing"]
    assert ts.instruments == ["synthesizer", "piano", "female vocals"]
    assert ts.other == ["80s", "instrumental"]


def test_prefixed_mtg_tags():
    ts = tagset_from_prefixed(["genre---rock", "genre---electronic", "mood/theme---calm",
                               "instrument---piano", "instrument---acousticguitar", "mood/theme---film"])
    assert ts.genres == ["rock", "electronic"]
    assert ts.moods == ["calm"]
    assert ts.other == ["film"]        # a theme, not a mood
    assert ts.instruments == ["piano", "acoustic guitar"]
    assert synthesize_captions(ts, "mtg-1")[0] == \
        "A calm rock and electronic track featuring piano and acoustic guitar"


def test_human_captions_win_and_tag_captions_become_alternatives():
    from musiccli.captions import alt_captions_with_tags

    alts = alt_captions_with_tags("A moody synthwave tune.", ["A moody synthwave tune.", "Retro synths."],
                                  ["dark", "synthesizer", "electronic"], key="musiccaps-x")
    assert alts[0] == "Retro synths."          # the human alternatives keep their place
    assert "A moody synthwave tune." not in alts  # no duplicate of the main caption
    assert len(alts) >= 2 and any("synthesizer" in a for a in alts[1:])
    assert alts == alt_captions_with_tags("A moody synthwave tune.", ["A moody synthwave tune.", "Retro synths."],
                                          ["dark", "synthesizer", "electronic"], key="musiccaps-x")
    assert alt_captions_with_tags("x", [], [], key="k") == []
