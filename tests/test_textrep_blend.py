"""The ``blend`` text representation: captions, tag subsets and sentences from the clip's own tags."""

from __future__ import annotations

from musiccli.captions import classify_attributes
from musiccli.manifest import Record
from musiccli.sources.synth_gen import plan_dataset
from musiccli.training.textrep import TEXT_REPS, attribute_sentence, draw_text, tag_text


def _record(i: int = 1, **extra) -> Record:
    sp = plan_dataset(i + 1, 0)[i]
    return Record(id=sp.id, audio_path="/x.wav", caption=sp.caption, duration=10.0,
                  alt_captions=list(sp.alt_captions), tags=list(sp.tags), artist=sp.artist, title=sp.title,
                  extra=dict(extra))


def test_blend_draws_every_kind_deterministically_and_never_the_fictional_artist():
    r = _record()
    texts = [draw_text(r, "blend", key) for key in range(300)]
    assert texts == [draw_text(r, "blend", key) for key in range(300)]        # a pure function of the key
    assert "blend" in TEXT_REPS
    captions = set(r.captions)
    tag_words = {tag_text(t) for t in r.tags}
    n_caption = sum(t in captions for t in texts)
    n_tags = sum(set(t.split(", ")) <= tag_words for t in texts)
    n_sentence = len(texts) - n_caption - n_tags
    assert min(n_caption, n_tags, n_sentence) > 50, (n_caption, n_tags, n_sentence)   # about a third each
    assert not any(r.artist in t or r.title in t for t in texts)


def test_attribute_sentences_use_only_the_clips_own_attributes():
    import numpy as np

    r = _record(6)   # a metal clip
    words = {w for t in r.tags for w in tag_text(t).replace("-", " ").split()}
    glue = {"a", "an", "and", "the", "with", "featuring", "track", "piece", "song", "tune", "composition",
            "recording", "music", "this", "sounds", "feels", "features", "uses", "showcases", "built", "around",
            "led", "by", "played", "on", "in", "carries", "carry", "drives", "drive", "shapes", "shape",
            "plays", "play", "mood", "feel", "vibe", "atmosphere", "driven", "tagged"}
    for seed in range(40):
        text = attribute_sentence(r, np.random.default_rng(seed))
        assert text and text[0].isupper()
        unknown = {w for w in text.lower().replace(",", " ").replace("-", " ").split()} - words - glue
        assert not unknown, (text, unknown)


def test_decade_from_the_records_year_and_captions_without_tags():
    import numpy as np

    r = _record(year=1994)
    assert any(", from the 1990s" in (attribute_sentence(r, np.random.default_rng(s)) or "") for s in range(20))
    bare = Record(id="x", audio_path="/x.wav", caption="A calm piece.", duration=5.0, alt_captions=["Soft."])
    assert {draw_text(bare, "blend", k) for k in range(30)} == {"A calm piece.", "Soft."}


def test_classify_attributes_separates_instrument_lines_and_descriptors():
    ts = classify_attributes(["metal", "dark", "distorted electric guitar", "double-kick drums", "hi-hats",
                              "minor key", "mid-tempo", "no drums", "sparse", "instrumental"])
    assert ts.genres == ["metal"]
    assert ts.instruments == ["distorted electric guitar", "double-kick drums", "hi-hats"]
    assert ts.moods == ["dark", "sparse"]
    assert ts.other == ["minor key", "mid-tempo", "no drums", "instrumental"]
