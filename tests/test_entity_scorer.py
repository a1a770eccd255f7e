"""Entity-level factual consistency on source/summary pairs written here, with the real spaCy NER: the
headline faithfulness scorer, as make_faithfulness_scorer() returns it."""

import math

import pytest

from cdb.scoring.entities import EntityConsistency, entity_tokens, normalise, positions, supported

# (source, faithful abstractive summary: other words, same facts, (a fact in the source, a changed one))
PAIRS = [
    (("On March 3, 2021, the city council of Springfield approved a budget of $4.2 million, Mayor Jane "
      "Porter said. The plan, which passed 7 to 2, raises spending on schools by 12 percent."),
     ("Springfield's council backed a $4.2 million budget in March 2021 that lifts school spending by 12%, "
      "according to Mayor Porter."),
     ("$4.2 million", "$4.8 million")),
    (("Acme Corp said on Tuesday that it will cut 1,200 jobs in Ohio by the end of 2024, about 8 percent "
      "of its workforce. Chief executive Maria Lopez blamed falling demand in Europe."),
     ("Blaming weaker demand in Europe, Acme Corp plans to shed 1200 jobs in Ohio by the end of 2024, "
      "roughly 8% of its staff, CEO Maria Lopez announced on Tuesday."),
     ("Ohio", "Texas")),
    (("The United Nations' health agency reported 3,500 new cases in Kenya last week, five times the "
      "number seen in January."),
     ("According to the United Nations health agency, Kenya recorded 3500 new cases last week, 5 times as "
      "many as in January."),
     ("January", "February")),
]


@pytest.fixture(scope="module")
def scorer():
    from cdb.scoring import make_faithfulness_scorer

    made = make_faithfulness_scorer()
    assert isinstance(made, EntityConsistency)
    return made


def test_faithful_rewording_beats_a_copy_with_one_fact_changed(scorer):
    sources = [source for source, _, _ in PAIRS]
    abstractive = scorer.score(sources, [summary for _, summary, _ in PAIRS])
    changed = scorer.score(sources, [source.replace(old, new) for source, _, (old, new) in PAIRS])
    for source, _, (old, _) in PAIRS:
        assert old in source  # the change really happened
    for faithful, corrupted in zip(abstractive, changed):
        assert faithful > corrupted
        assert corrupted < 1.0


def test_a_verbatim_copy_does_not_beat_a_faithful_rewording(scorer):
    sources = [source for source, _, _ in PAIRS]
    summaries = [summary for _, summary, _ in PAIRS]
    copy = scorer.score(sources, sources)
    abstractive = scorer.score(sources, summaries)
    assert copy == [1.0] * len(PAIRS)
    # The metric's own noise on a summary: one of its entities (a single NER slip) either way.
    for c, a, entities in zip(copy, abstractive, scorer.entities(summaries)):
        assert c - a <= 1 / len(entities)


@pytest.mark.parametrize("source,summary", [
    ("John Smith's company hired 40 workers.", "John Smith hired 40 workers."),  # possessive
    ("John Smith hired 40 workers.", "John Smith's firm hired 40 workers."),
    ("United Nations officials met in Geneva.", "The United Nations met in Geneva."),  # determiner
    ("The town has 1,000 residents.", "The town has 1000 residents."),  # thousands separator
    ("Prices rose 5 percent in Germany.", "Prices in Germany rose 5%."),  # percent sign
    ("Prices rose 5 per cent in Germany.", "Prices in Germany rose 5 percent."),
    ("Sales reached $3.5 million in France.", "In France sales reached 3.5 million dollars."),
    ("Joe R. Biden visited Texas.", "Joe Biden visited Texas."),  # a middle initial
    ("The law passed on March 3, 2021.", "The law passed on 3 March 2021."),  # a reordered date
])
def test_form_variants_are_supported_and_a_changed_value_is_not(scorer, source, summary):
    assert scorer.score([source], [summary]) == [1.0]
    changed = summary.replace("Smith", "Jones").replace("Geneva", "Vienna").replace("1000", "1200") \
        .replace("5", "7").replace("Biden", "Harris").replace("2021", "2020")
    assert changed != summary
    assert scorer.score([source], [changed]) < [1.0]


def test_a_summary_without_entities_scores_nan(scorer):
    scores = scorer.score(["Acme Corp cut 1,200 jobs in Ohio.", "Anything."],
                          ["The company is cutting jobs.", ""])
    assert all(math.isnan(score) for score in scores)


def test_each_distinct_entity_counts_once(scorer):
    # Ohio (supported) once; Texas (not in the source) three times: still one of two entities.
    summary = "Texas, Texas and Texas lost jobs to Ohio."
    assert scorer.entities([summary])[0].count(("texas",)) == 1
    assert scorer.score(["Acme Corp cut 1,200 jobs in Ohio."], [summary]) == [0.5]


def test_sources_and_summaries_must_pair_up(scorer):
    with pytest.raises(ValueError, match="2 sources but 1 summaries"):
        scorer.score(["a", "b"], ["a"])


@pytest.mark.parametrize("tokens,expected", [
    (["The", "United", "Nations", "'"], ("united", "nations")),
    (["Smith", "’s"], ("smith",)),
    (["U.S.", "Army"], ("us", "army")),
    (["1,000.50"], ("1000.5",)),
    (["five", "per", "cent"], ("5", "%")),
    (["USD", "3.0", "million"], ("$", "3", "million")),
    (["(", "NASA", ")"], ("nasa",)),
])
def test_entity_normalisation(tokens, expected):
    assert entity_tokens(tokens) == expected


def index(text: str) -> dict[str, list[int]]:
    """A source index from whitespace-separated tokens."""
    return positions(normalise(text.split()))


def test_head_tokens_must_lie_close_together_in_the_source():
    march_2021 = entity_tokens(["March", "2021"])
    assert supported(march_2021, index("It was founded in March 2021 by two friends ."))
    assert not supported(march_2021, index("In March the club lost a cup final , and late in 2021 it closed ."))
    # Function words are not needed: "Bank of England" is supported by "Bank of the England".
    assert supported(entity_tokens(["Bank", "of", "England"]), index("the Bank of the England"))
