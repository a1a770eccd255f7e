"""The validator under fuzzing: any input ends in records, a counted skip, or its clear DataError."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cdb.data import records as rec
from cdb.data.records import DataError, load_records

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
negative = st.fixed_dictionaries({"text": st.text(max_size=30) | json_values,
                                  "type": st.sampled_from(rec.NEGATIVE_TYPES) | st.text(max_size=8)})
record_like = st.fixed_dictionaries(
    {},
    optional={"id": st.text(max_size=8) | st.integers() | json_values, "source": st.text(max_size=40) | json_values,
              "positives": st.lists(st.text(max_size=30) | json_values, max_size=4) | json_values,
              "negatives": st.lists(negative | json_values, max_size=3) | json_values,
              "extra": json_values},
)
line = st.one_of(
    record_like.map(json.dumps).map(str.encode),
    json_values.map(json.dumps).map(str.encode),
    st.binary(max_size=60).filter(lambda b: b"\n" not in b),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, max_size=6), skip=st.booleans())
def test_validator_never_fails_any_other_way(tmp_path_factory, lines, skip):
    path = tmp_path_factory.mktemp("fuzz") / "data.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    try:
        records, rejected = load_records(str(path), on_bad_record="skip" if skip else "error")
    except DataError as exc:
        assert str(exc).startswith(str(path))  # it always names the file
        return
    assert records and all(len(r.positives) >= 2 and r.negatives for r in records)
    assert all(r.where.startswith(f"{path}:") for r in rejected)


def test_over_long_record_has_its_own_message(tmp_path):
    path = tmp_path / "long.jsonl"
    path.write_bytes(b'{"id": "' + b"x" * (rec.MAX_RECORD_BYTES + 10) + b'"}\n')
    try:
        load_records(str(path))
    except DataError as exc:
        assert f"{path}:1" in str(exc) and "byte limit" in str(exc)
    else:
        raise AssertionError("an over-long record was accepted")


def test_wrong_encoding_and_empty_dataset_have_their_own_messages(tmp_path):
    latin = tmp_path / "latin1.jsonl"
    latin.write_bytes('{"id": "café"}\n'.encode("latin-1"))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    messages = []
    for path in (latin, empty):
        try:
            load_records(str(path))
        except DataError as exc:
            messages.append(str(exc))
    assert "not valid UTF-8" in messages[0] and f"{latin}:1" in messages[0]
    assert "empty" in messages[1]
