#!/usr/bin/env python3
"""Generate the embedded contrastive dataset shipped as ``cdb/assets/contrastive.jsonl``.

Pure standard library, no network, no model: every source, positive and negative is built
from hand-written templates filled with invented (but plausible) entities drawn from a
``random.Random(0)`` stream, so the output is byte-for-byte deterministic.

Schema, one JSON object per line (keys in this order)::

    {"id": str, "source": str, "positives": [str, ...],
     "negatives": [{"text": str, "type": str}, ...]}

Per record (see /work/shared/METHOD.md, "Training data: one record per source"):

* ``source``: a short news-like paragraph (3-5 sentences, < 90 words);
* ``positives``: the faithful one-sentence reference summary first, then 1-2 paraphrases;
* ``negatives``: 2-4 typed negatives, drawn from
    - ``swap_ent``: 1-2 entities of the reference replaced by same-type entities of the source,
    - ``mask_ent``: 1-3 entities replaced by same-type entities that are NOT in the source,
    - ``sys_lowcon``: a vague, low-confidence, partly wrong summary,
    - ``toxic``: a hostile, insulting rewrite of the reference.

Every positive/negative pair of a record has word-level Jaccard similarity <= 0.8 (the
filter of METHOD.md); candidates that fail it are re-drawn or dropped.

Usage: ``python scripts/make_embedded_data.py [--output PATH]``
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import random
import re
import string
import sys
from collections import Counter

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "cdb", "assets", "contrastive.jsonl")

N_RECORDS = 240
SEED = 0
MAX_JACCARD = 0.8
MAX_SOURCE_WORDS = 90

ALLOWED_TYPES = (
    "toxic", "swap_ent", "mask_ent", "mask_rel", "regen_ent", "regen_rel", "sys_lowcon", "other",
)

# Words used by the toxic rewrites; they must never appear in a source or a positive.
OFFENSIVE_WORDS = (
    "idiot", "idiots", "stupid", "damn", "crap", "moron", "morons", "hell", "shut", "suck",
    "sucks", "pathetic", "dumbass", "dumbasses", "garbage", "losers", "clowns", "jerks",
)

# --------------------------------------------------------------------------------------
# Entity pools (all invented combinations; city/country pairs are real geography)
# --------------------------------------------------------------------------------------

FIRST_NAMES = [
    "Maria", "James", "Aisha", "Tomas", "Elena", "David", "Priya", "Lukas", "Sofia", "Daniel",
    "Hana", "Marco", "Fatima", "Oliver", "Ingrid", "Samuel", "Yuki", "Ahmed", "Clara", "Peter",
    "Leila", "Jonas", "Grace", "Mateo", "Nadia", "Victor", "Emma", "Rahul", "Chloe", "Kwame",
    "Anna", "Felix", "Zainab", "Hugo", "Mei", "Carlos", "Irene", "Omar", "Julia", "Noah",
    "Amara", "Stefan", "Lucia", "Ravi", "Helen", "Diego", "Sara", "Erik", "Nora", "Pablo",
]
LAST_NAMES = [
    "Lopez", "Okafor", "Schmidt", "Nakamura", "Rossi", "Novak", "Haddad", "Larsen", "Fischer",
    "Moreau", "Kowalski", "Mensah", "Duarte", "Lindqvist", "Petrov", "Brennan", "Ivanova",
    "Tanaka", "Costa", "Keller", "Varga", "Horvat", "Dubois", "Sato", "Bianchi", "Ortega",
    "Jensen", "Weber", "Nyberg", "Chowdhury", "Adeyemi", "Castillo", "Hoffmann", "Quinn",
    "Ferreira", "Kaur", "Walsh", "Demir", "Yilmaz", "Santos", "Berg", "Olsen", "Park", "Reyes",
    "Abbott", "Farrell", "Whitaker", "Lund", "Osei", "Moretti",
]

CITIES = {
    "France": ["Lyon", "Marseille", "Toulouse", "Nantes", "Lille", "Bordeaux"],
    "Germany": ["Hamburg", "Leipzig", "Cologne", "Dresden", "Stuttgart", "Bremen"],
    "Spain": ["Valencia", "Seville", "Bilbao", "Zaragoza", "Malaga"],
    "Italy": ["Turin", "Bologna", "Naples", "Genoa", "Verona"],
    "Canada": ["Calgary", "Winnipeg", "Halifax", "Ottawa", "Edmonton"],
    "Brazil": ["Curitiba", "Recife", "Fortaleza", "Manaus"],
    "Japan": ["Osaka", "Sapporo", "Fukuoka", "Sendai", "Nagoya"],
    "Kenya": ["Nairobi", "Mombasa", "Kisumu", "Nakuru"],
    "Australia": ["Perth", "Adelaide", "Brisbane", "Hobart"],
    "Poland": ["Krakow", "Gdansk", "Wroclaw", "Poznan"],
    "Sweden": ["Gothenburg", "Malmo", "Uppsala", "Umea"],
    "Ireland": ["Cork", "Galway", "Limerick", "Waterford"],
    "Mexico": ["Monterrey", "Guadalajara", "Puebla", "Merida"],
    "India": ["Pune", "Jaipur", "Kochi", "Lucknow"],
    "Norway": ["Bergen", "Trondheim", "Stavanger", "Tromso"],
}
COUNTRIES = list(CITIES)

MONTHS = [
    "January", "February", "March", "April", "May", "June", "July", "August", "September",
    "October", "November", "December",
]

ORG_ROOTS = [
    "Northbridge", "Ashgrove", "Kestrel", "Brightwater", "Halden", "Corvel", "Larkspur",
    "Meridian", "Silverpine", "Redfern", "Oakhurst", "Bramwell", "Clearwater", "Eastmoor",
    "Fairhaven", "Greystone", "Ironwood", "Juniper", "Lakeside", "Millbrook", "Norcliffe",
    "Pinecrest", "Riverton", "Stonebridge", "Thornfield", "Westvale", "Whitmore", "Alderley",
    "Beaconfield", "Cobalt",
]
ORG_SUFFIXES = {
    "research": ["Institute of Marine Biology", "Institute for Ecology", "Research Centre",
                 "Natural History Institute", "Biodiversity Institute"],
    "company": ["Systems", "Foods", "Logistics", "Pharma", "Motors", "Textiles", "Robotics",
                "Electronics", "Holdings", "Appliances"],
    "team": ["Rovers", "United", "Athletic", "Wanderers", "Rangers", "Albion", "Town"],
    "museum": ["Museum of Art", "Gallery", "Museum of Modern Art", "Art Museum"],
    "hospital": ["General Hospital", "University Hospital", "Medical Centre", "Community Hospital"],
    "investor": ["Capital", "Ventures", "Partners", "Growth Fund"],
    "startup": ["Labs", "Analytics", "Health", "Robotics", "Software"],
    "foundation": ["Foundation", "Trust", "Charitable Foundation", "Education Fund"],
    "university": ["University", "Institute of Technology", "College"],
    "energy": ["Wind", "Renewables", "Power", "Energy"],
    "green": ["Nature Trust", "Bird Society", "Conservation Society", "Wildlife Alliance"],
    "operator": ["Rail", "Railways", "Express", "Transit"],
    "regulator": ["Consumer Authority", "Safety Board", "Data Protection Office",
                  "Trading Standards Agency"],
    "agency": ["Space Agency", "Aerospace Agency", "Satellite Centre"],
    "label": ["Records", "Music", "Sound"],
    "assoc": ["Farmers Association", "Growers Union", "Agricultural Cooperative"],
    "utility": ["Power", "Electric", "Grid", "Utilities"],
    "prize": ["Prize for Fiction", "Book Prize", "Literary Award", "Fiction Prize"],
    "venue": ["Park", "Stadium", "Arena", "Ground"],
}

BOOK_TITLES = [
    "The Silent Harbour", "A House of Glass", "Winter in the Orchard", "Salt and Ash",
    "The Lighthouse Keeper", "Rivers of Paper", "The Last Ferry", "Borrowed Light",
    "The Clockmaker's Garden", "Northern Lanterns", "A Year of Small Storms", "The Quiet Border",
    "Letters from the Valley", "The Copper Bell", "Seven Bridges",
]
STORM_NAMES = [
    "Alma", "Bruno", "Ciara", "Dennis", "Ellen", "Franz", "Gerda", "Henrik", "Isolde", "Jorge",
    "Karla", "Lorenzo", "Marit", "Nils",
]
SAT_NAMES = ["Aurora", "Halcyon", "Zephyr", "Borealis", "Cirrus", "Nimbus", "Vega", "Altair"]
BAND_NAMES = [
    "Paper Comets", "Northern Static", "Velvet Harbour", "Glass Orchard", "Silver Tides",
    "Midnight Ferry", "Copper Lanterns", "Quiet Engines", "Blue Meridian", "Wild Cartographers",
]
ORDINALS = ["second", "third", "fourth", "fifth", "sixth", "seventh"]

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

_WORD_SPLIT = re.compile(r"\W+")
_WORD = re.compile(r"\w+")


def words(text: str) -> set:
    """Lower-cased word set (split on non-word characters), as used by the Jaccard filter."""
    return {w for w in _WORD_SPLIT.split(text.lower()) if w}


def jaccard(a: str, b: str) -> float:
    wa, wb = words(a), words(b)
    if not wa and not wb:
        return 1.0
    return len(wa & wb) / len(wa | wb)


def capitalised_words(text: str) -> list:
    return [w for w in _WORD.findall(text) if w[0].isupper()]


def fmt_int(n: int) -> str:
    return f"{n:,}"


def field_names(fmt: str) -> list:
    return [f for _, f, _, _ in string.Formatter().parse(fmt) if f]


class Ctx:
    """Draws the entities of one record and remembers their type and how to draw another."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.ents = []  # list of (type, value, maker); type "BASE" or "BASE:kind"
        self.used_tokens = set()

    # -- registry ------------------------------------------------------------------
    def _register(self, typ, maker):
        for _ in range(1000):
            v = maker()
            toks = v.split()
            if any(v == e[1] for e in self.ents):
                continue
            if typ == "PER" and any(t in self.used_tokens for t in toks):
                continue
            self.ents.append((typ, v, maker))
            if typ == "PER":
                self.used_tokens.update(toks)
            return v
        raise RuntimeError(f"could not draw a fresh {typ}")

    def type_of(self, value):
        for typ, v, _ in self.ents:
            if v == value:
                return typ
        return None

    def maker_of(self, value):
        for _, v, maker in self.ents:
            if v == value:
                return maker
        return None

    # -- makers ----------------------------------------------------------------------
    def person(self):
        r = self.rng
        return self._register("PER", lambda: f"{r.choice(FIRST_NAMES)} {r.choice(LAST_NAMES)}")

    def org(self, kind):
        r = self.rng
        return self._register(f"ORG:{kind}",
                              lambda: f"{r.choice(ORG_ROOTS)} {r.choice(ORG_SUFFIXES[kind])}")

    def country(self):
        return self._register("COUNTRY", lambda: self.rng.choice(COUNTRIES))

    def city(self, country=None):
        r = self.rng
        if country is None:
            return self._register("CITY", lambda: r.choice(r.choice(list(CITIES.values()))))
        return self._register("CITY", lambda: r.choice(CITIES[country]))

    def date(self, year=None):
        r = self.rng

        def make():
            y = year if year is not None else r.randint(2015, 2024)
            return f"{r.randint(1, 28)} {r.choice(MONTHS)} {y}"
        return self._register("DATE", make)

    def date_near(self, base, lo_days, hi_days):
        """A date ``lo_days``..``hi_days`` days after ``base`` (negative: before)."""
        r = self.rng
        d, mon, y = base.split()
        b = datetime.date(int(y), MONTHS.index(mon) + 1, int(d))

        def make():
            x = b + datetime.timedelta(days=r.randint(lo_days, hi_days))
            return f"{x.day} {MONTHS[x.month - 1]} {x.year}"
        return self._register("DATE", make)

    def year(self):
        return self._register("YEAR", lambda: str(self.rng.randint(2008, 2023)))

    def num(self, lo, hi, step=1):
        r = self.rng
        return self._register("NUM", lambda: fmt_int(r.randrange(lo, hi + 1, step)))

    def money(self, lo, hi, cur=None, decimals=True):
        r = self.rng
        cur = cur or r.choice(["euros", "dollars", "pounds"])

        def make():
            if decimals and r.random() < 0.6:
                amt = f"{r.randint(lo * 10, hi * 10) / 10:.1f}"
            else:
                amt = str(r.randint(lo, hi))
            return f"{amt} million {cur}"
        return self._register("MONEY", make)

    def price(self, lo, hi, cur=None, step=1):
        r = self.rng
        cur = cur or r.choice(["euros", "dollars", "pounds"])
        return self._register("PRICE", lambda: f"{fmt_int(r.randrange(lo, hi + 1, step))} {cur}")

    def pct(self, lo, hi):
        r = self.rng

        def make():
            if r.random() < 0.4:
                return f"{r.randint(lo * 10, hi * 10) / 10:.1f} percent"
            return f"{r.randint(lo, hi)} percent"
        return self._register("PCT", make)

    def pick(self, typ, pool):
        return self._register(typ, lambda: self.rng.choice(pool))

    def score(self):
        r = self.rng

        def make():
            a = r.randint(2, 5)
            return f"{a}-{r.randint(0, a - 1)}"
        return self._register("SCORE", make)

    def sat(self):
        r = self.rng
        return self._register("SAT", lambda: f"{r.choice(SAT_NAMES)}-{r.randint(2, 9)}")


def base_type(typ):
    return typ.split(":")[0] if typ else None


# --------------------------------------------------------------------------------------
# Source templates. Each returns dict(topic, source, ref, paras, slots, vague).
# ``ref``/``paras`` are format strings over ``slots``; entity slots are the values the
# Ctx registered, other slots (a product, a project) are plain fillers.
# --------------------------------------------------------------------------------------

def t_science(c):
    country = c.country()
    city = c.city(country)
    org = c.org("research")
    p1, p2 = c.person(), c.person()
    date = c.date()
    n1, n2, m = c.num(3, 19), c.num(120, 900, 10), c.num(6, 30)
    thing = c.rng.choice(["freshwater snails", "beetles", "orchids", "dragonflies", "mosses",
                          "frogs", "spiders"])
    journal = c.rng.choice(["Ecology Letters", "the Journal of Field Biology", "Biodiversity Review"])
    verb = c.rng.choice(["said", "announced"])
    source = (
        f"Researchers at the {org} in {city} {verb} on {date} that they had identified {n1} "
        f"previously unknown species of {thing} in {country}. The survey, led by biologist {p1}, "
        f"covered {n2} square kilometres over {m} months. Co-author {p2} said the findings would "
        f"help authorities plan new protected areas. The results were published in {journal}."
    )
    return dict(
        topic="science", source=source,
        ref="{p1} of the {org} led a survey that identified {n1} previously unknown species of {thing}, the team said on {date}.",
        paras=[
            "A survey headed by {p1} at the {org} found {n1} new species of {thing}, according to an announcement on {date}.",
            "On {date}, the {org} reported that a team under {p1} had discovered {n1} species of {thing} not known before.",
            "Scientists led by {p1} from the {org} have described {n1} previously unrecorded {thing} species, they announced on {date}.",
        ],
        slots=dict(p1=p1, org=org, n1=n1, thing=thing, date=date),
        vague=["some animals", "a study", "nature"],
    )


def t_sports(c):
    country = c.country()
    city = c.city(country)
    team1, team2 = c.org("team"), c.org("team")
    venue = c._register("VENUE", lambda: f"{c.rng.choice(ORG_ROOTS)} {c.rng.choice(ORG_SUFFIXES['venue'])}")
    p1, p2, p3 = c.person(), c.person(), c.person()
    date = c.date()
    sc = c.score()
    rank = c.rng.choice(ORDINALS)
    pts = c.num(20, 70)
    source = (
        f"{team1} beat {team2} {sc} at {venue} in {city} on {date}. Striker {p1} scored twice in "
        f"the second half, and goalkeeper {p2} saved a penalty in the final minutes. Coach {p3} "
        f"said the team had worked hard for the result. The win lifts {team1} to {rank} place in "
        f"the league with {pts} points."
    )
    return dict(
        topic="sports", source=source,
        ref="{team1} beat {team2} {sc} in {city} on {date}, with {p1} scoring twice.",
        paras=[
            "{p1} scored two goals as {team1} won {sc} against {team2} in {city} on {date}.",
            "On {date}, {team1} won {sc} over {team2} in {city}, helped by two goals from {p1}.",
            "Two goals from {p1} gave {team1} a {sc} victory against {team2} in {city} on {date}.",
        ],
        slots=dict(team1=team1, team2=team2, sc=sc, city=city, date=date, p1=p1),
        vague=["a game", "some football", "a team"],
    )


def t_business(c):
    city = c.city()
    country = c.country()
    org = c.org("company")
    p1, p2 = c.person(), c.person()
    cur = c.rng.choice(["euros", "dollars", "pounds"])
    money1 = c.money(40, 900, cur)
    year = c.year()
    pct1, pct2 = c.pct(3, 25), c.pct(1, 9)
    n = c.num(50, 600, 10)
    date = c.date()
    product = c.rng.choice(["kitchen appliances", "electric bicycles", "medical sensors",
                            "outdoor clothing", "frozen foods", "industrial robots"])
    source = (
        f"{org}, the {city}-based maker of {product}, reported revenue of {money1} for {year}, up "
        f"{pct1} from the previous year. Chief executive {p1} said demand had been strongest in "
        f"{country}. Finance director {p2} told analysts that the company expected to hire {n} more "
        f"staff. Shares in the company rose {pct2} on {date}."
    )
    return dict(
        topic="business", source=source,
        ref="{org} said its revenue rose {pct1} to {money1} in {year}, with chief executive {p1} pointing to strong demand in {country}.",
        paras=[
            "Revenue at {org} grew by {pct1} to {money1} in {year}, according to chief executive {p1}, who cited demand in {country}.",
            "In {year}, {org} increased its revenue by {pct1} to {money1}, driven by demand in {country}, said its chief executive {p1}.",
            "Chief executive {p1} said sales at {org} climbed {pct1} to {money1} in {year}, led by buyers in {country}.",
        ],
        slots=dict(org=org, pct1=pct1, money1=money1, year=year, p1=p1, country=country),
        vague=["a company", "money", "some business"],
    )


def t_council(c):
    city = c.city()
    p1, p2 = c.person(), c.person()
    money = c.money(2, 60)
    v1 = c.num(8, 14)
    v2 = c.num(2, 7)
    n = c.num(5000, 90000, 500)
    date = c.date()
    date2 = c.date_near(date, 60, 400)
    project = c.rng.choice(["renovate the central library", "build two new cycle lanes",
                            "repair ageing bridges", "expand the public bus network",
                            "open three new primary schools", "restore the old market hall"])
    source = (
        f"The city council of {city} voted {v1} to {v2} on {date} to approve a {money} plan to "
        f"{project}. Mayor {p1} said the project would benefit about {n} residents. Councillor "
        f"{p2}, who voted against the plan, said the cost was too high. Work is expected to begin "
        f"on {date2}."
    )
    return dict(
        topic="local government", source=source,
        ref="The city council of {city} approved a {money} plan to {project} on {date}, a proposal backed by Mayor {p1}.",
        paras=[
            "On {date}, councillors in {city} voted to fund a {money} plan to {project}, which Mayor {p1} supported.",
            "Mayor {p1} welcomed the decision of the {city} council on {date} to spend {money} to {project}.",
            "Backed by Mayor {p1}, a {money} plan to {project} won the approval of the council in {city} on {date}.",
        ],
        slots=dict(city=city, money=money, project=project, date=date, p1=p1),
        vague=["a plan", "the council", "some project"],
    )


def t_culture(c):
    country = c.country()
    city = c.city(country)
    c2, c3 = c.country(), c.country()
    museum = c.org("museum")
    artist, p1 = c.person(), c.person()
    n = c.num(40, 160)
    price = c.price(8, 25)
    visitors = c.num(20000, 150000, 1000)
    date = c.date()
    date2 = c.date_near(date, 60, 200)
    medium = c.rng.choice(["painter", "sculptor", "photographer", "printmaker"])
    source = (
        f"The {museum} in {city} will open an exhibition of {n} works by the {medium} {artist} on "
        f"{date}. The show, curated by {p1}, includes pieces lent by collectors in {c2} and {c3}. "
        f"Tickets cost {price}, and the museum expects around {visitors} visitors. The exhibition "
        f"runs until {date2}."
    )
    return dict(
        topic="culture", source=source,
        ref="The {museum} in {city} opens an exhibition of {n} works by the {medium} {artist}, curated by {p1}, on {date}.",
        paras=[
            "An exhibition of {n} works by the {medium} {artist} opens at the {museum} in {city} on {date}, with {p1} as curator.",
            "On {date}, the {museum} in {city} will start showing {n} works by {artist}, a {medium}, in a show curated by {p1}.",
            "Curator {p1} has put together a show of {n} pieces by the {medium} {artist}, opening at the {museum}, {city}, on {date}.",
        ],
        slots=dict(museum=museum, city=city, n=n, medium=medium, artist=artist, p1=p1, date=date),
        vague=["some art", "a museum", "an event"],
    )


def t_health(c):
    city = c.city()
    hospital = c.org("hospital")
    p1, p2 = c.person(), c.person()
    money = c.money(3, 45)
    n = c.num(150, 900, 10)
    n2 = c.num(20, 140)
    pct = c.pct(10, 40)
    date = c.date()
    kind = c.rng.choice(["cancer screening", "children's asthma", "diabetes", "eye care",
                         "heart rehabilitation", "physiotherapy"])
    source = (
        f"A new {kind} clinic opened at {hospital} in {city} on {date}, the regional health "
        f"authority said. The clinic, which cost {money}, will treat up to {n} patients a week and "
        f"employ {n2} staff. Its director, {p1}, said waiting times should fall by {pct}. Health "
        f"minister {p2} attended the opening ceremony."
    )
    return dict(
        topic="health", source=source,
        ref="{hospital} in {city} opened a {kind} clinic led by {p1} on {date}, able to treat up to {n} patients a week.",
        paras=[
            "On {date}, a {kind} clinic directed by {p1} opened at {hospital} in {city}, with room for {n} patients each week.",
            "A {kind} clinic run by {p1} that can see {n} patients weekly opened at {hospital}, {city}, on {date}.",
            "{p1} is the director of a {kind} clinic that opened at {hospital} in {city} on {date} and can treat {n} patients a week.",
        ],
        slots=dict(hospital=hospital, city=city, kind=kind, p1=p1, date=date, n=n),
        vague=["a hospital", "some patients", "health"],
    )


def t_tech(c):
    city = c.city()
    country = c.country()
    startup = c.org("startup")
    investor = c.org("investor")
    p1, p2 = c.person(), c.person()
    cur = c.rng.choice(["euros", "dollars", "pounds"])
    money1 = c.money(5, 80, cur)
    money2 = c.money(1, 4, cur)
    year = c.year()
    n = c.num(12, 240)
    date = c.date()
    product = c.rng.choice(["battery management software", "crop monitoring drones",
                            "translation tools for hospitals", "energy-saving chips",
                            "software for small shops", "delivery robots"])
    source = (
        f"{startup}, a {city} start-up that develops {product}, has raised {money1} in a funding "
        f"round led by {investor}, the company said on {date}. Founded in {year} by {p1} and {p2}, "
        f"the firm employs {n} people. It plans to use the money to expand into {country}. The "
        f"company raised {money2} in an earlier round."
    )
    return dict(
        topic="technology", source=source,
        ref="{startup}, co-founded by {p1}, raised {money1} in a funding round led by {investor}, it said on {date}.",
        paras=[
            "The start-up {startup}, whose founders include {p1}, secured {money1} from investors led by {investor}, it announced on {date}.",
            "{investor} led a {money1} funding round for {startup}, the company co-founded by {p1}, according to a statement on {date}.",
            "On {date}, {startup} said it had collected {money1} in new funding, with {investor} leading and {p1} among its founders.",
        ],
        slots=dict(startup=startup, p1=p1, money1=money1, investor=investor, date=date),
        vague=["a start-up", "some technology", "investors"],
    )


def t_education(c):
    city = c.city()
    country = c.country()
    uni = c.org("university")
    foundation = c.org("foundation")
    p1, p2 = c.person(), c.person()
    money = c.money(1, 30)
    n = c.num(20, 300)
    date = c.date()
    date2 = c.date_near(date, 20, 150)
    subject = c.rng.choice(["engineering", "nursing", "mathematics", "marine science",
                            "computer science", "architecture"])
    source = (
        f"The {uni} in {city} announced on {date} a new scholarship programme worth {money} for "
        f"students of {subject}. The programme will support {n} students each year. It is funded "
        f"by a donation from the {foundation}, chaired by {p1}. Vice-chancellor {p2} said the "
        f"scheme would widen access for students from {country}. Applications open on {date2}."
    )
    return dict(
        topic="education", source=source,
        ref="Vice-chancellor {p2} of the {uni} in {city} announced a {money} scholarship programme for {subject} students, funded by the {foundation}, on {date}.",
        paras=[
            "On {date}, the {uni} in {city} unveiled {money} in scholarships for {subject} students, paid for by the {foundation}, its vice-chancellor {p2} said.",
            "A {money} scholarship scheme for {subject} at the {uni} in {city}, backed by the {foundation}, was announced by vice-chancellor {p2} on {date}.",
            "Students of {subject} at the {uni}, {city}, will benefit from {money} in scholarships from the {foundation}, {p2} announced on {date}.",
        ],
        slots=dict(p2=p2, uni=uni, city=city, money=money, subject=subject, foundation=foundation, date=date),
        vague=["a university", "some students", "education"],
    )


def t_environment(c):
    country = c.country()
    town = c.city(country)
    company = c.org("energy")
    group = c.org("green")
    p1, p2 = c.person(), c.person()
    mw = c.num(40, 400, 10)
    turbines = c.num(8, 60)
    homes = c.num(20000, 300000, 1000)
    months = c.num(14, 36)
    money = c.money(60, 700)
    date = c.date()
    source = (
        f"{company} has begun building a {mw}-megawatt wind farm near {town}, {country}, the "
        f"company said on {date}. The {money} project will have {turbines} turbines and should "
        f"power about {homes} homes. Project manager {p1} said construction would take {months} "
        f"months. Local environmental group {group}, led by {p2}, has raised concerns about "
        f"nesting birds."
    )
    return dict(
        topic="environment", source=source,
        ref="{company} started building a {mw}-megawatt wind farm with {turbines} turbines near {town} on {date}.",
        paras=[
            "Construction of a {mw}-megawatt wind farm of {turbines} turbines near {town} has been started by {company}, it said on {date}.",
            "On {date}, {company} said work had begun on its {mw}-megawatt wind farm of {turbines} turbines close to {town}.",
            "Work on {company}'s {turbines}-turbine wind farm near {town}, rated at {mw} megawatts, began according to a statement on {date}.",
        ],
        slots=dict(company=company, mw=mw, turbines=turbines, town=town, date=date),
        vague=["some energy", "a wind thing", "the environment"],
    )


def t_transport(c):
    country = c.rng.choice(COUNTRIES)
    city1, city2, city3 = c.city(country), c.city(country), c.city(country)
    operator = c.org("operator")
    p1, p2 = c.person(), c.person()
    mins = c.num(35, 90)
    mins_old = c.num(100, 200)
    money = c.money(300, 950, decimals=False)
    years = c.num(4, 9)
    n = c.num(8000, 60000, 500)
    date = c.date()
    source = (
        f"A new rail line linking {city1} and {city2} will open on {date}, {operator} announced. "
        f"Trains will also stop in {city3}, and the journey will take {mins} minutes, down from "
        f"{mins_old} minutes today. The line cost {money} and took {years} years to build. "
        f"Transport minister {p1} said about {n} passengers a day were expected, and union leader "
        f"{p2} welcomed the new jobs."
    )
    return dict(
        topic="transport", source=source,
        ref="{operator} will open a {city1}-{city2} rail line on {date}, cutting journeys to {mins} minutes.",
        paras=[
            "From {date}, trains on a new {operator} line will connect {city1} and {city2} in {mins} minutes.",
            "A {operator} rail link between {city1} and {city2}, opening on {date}, will bring the trip down to {mins} minutes.",
            "Travellers between {city1} and {city2} will need only {mins} minutes once the {operator} line opens on {date}.",
        ],
        slots=dict(operator=operator, city1=city1, city2=city2, date=date, mins=mins),
        vague=["some trains", "travel", "a line"],
    )


def t_storm(c):
    country = c.rng.choice(COUNTRIES)
    city, city2 = c.city(country), c.city(country)
    storm = c.pick("STORM", STORM_NAMES)
    utility = c.org("utility")
    p1 = c.person()
    kmh = c.num(90, 170)
    homes = c.num(5000, 80000, 500)
    flights = c.num(20, 140)
    injured = c.num(3, 19)
    date = c.date()
    date2 = c.date_near(date, 2, 9)
    source = (
        f"Storm {storm} brought winds of up to {kmh} kilometres per hour to {city} and {city2} on "
        f"{date}, the national weather service said. About {homes} homes lost power, and {flights} "
        f"flights were cancelled. Emergency services official {p1} said {injured} people were "
        f"treated for minor injuries. The power company {utility} expects to restore supplies by "
        f"{date2}."
    )
    return dict(
        topic="weather", source=source,
        ref="Storm {storm} hit {city} with winds of up to {kmh} kilometres per hour on {date}, leaving {homes} homes without power.",
        paras=[
            "Winds reaching {kmh} kilometres per hour during Storm {storm} cut power to {homes} homes in {city} on {date}.",
            "On {date}, Storm {storm} struck {city}, where gusts of {kmh} kilometres per hour left {homes} households without electricity.",
            "About {homes} homes in {city} were left without electricity after Storm {storm} brought {kmh} kilometre per hour winds on {date}.",
        ],
        slots=dict(storm=storm, city=city, kmh=kmh, date=date, homes=homes),
        vague=["some weather", "wind", "a storm or rain"],
    )


def t_award(c):
    city = c.city()
    p1, p2, p3 = c.person(), c.person(), c.person()
    prize = c.org("prize")
    book = c.pick("BOOK", BOOK_TITLES)
    money = c.price(20000, 90000, step=5000)
    n = c.num(4, 9)
    date = c.date()
    date2 = c.date_near(date, -90, -20)
    theme = c.rng.choice(["two sisters running a bakery", "a fishing village after a flood",
                          "a family of clockmakers", "a teacher in a mountain school",
                          "three friends crossing a desert"])
    last = p1.split()[1]
    source = (
        f"The novelist {p1} has won the {prize} for {book}, a novel about {theme}. The award, "
        f"worth {money}, was announced at a ceremony in {city} on {date}. Jury chair {p2} called "
        f"the book remarkable. {last} beat {n} other shortlisted writers, including {p3}, after the "
        f"shortlist was published on {date2}."
    )
    return dict(
        topic="literature", source=source,
        ref="The novelist {p1} won the {prize}, worth {money}, on {date} for {book}, a novel about {theme}.",
        paras=[
            "{book}, a novel about {theme}, earned {p1} the {prize} and its {money} award at a ceremony on {date}.",
            "On {date}, {p1} was awarded the {prize}, worth {money}, for {book}, which tells of {theme}.",
            "The {prize} and {money} went to {p1} on {date} for the novel {book}, about {theme}.",
        ],
        slots=dict(p1=p1, prize=prize, money=money, date=date, book=book, theme=theme),
        vague=["a book", "some prize", "writers"],
    )


def t_justice(c):
    city = c.city()
    company = c.org("company")
    regulator = c.org("regulator")
    p1, p2 = c.person(), c.person()
    money = c.money(1, 40)
    years = c.num(2, 8)
    n = c.num(300, 9000, 50)
    date = c.date()
    law, failure = c.rng.choice([
        ("data protection", "secure customer records"),
        ("food safety", "inspect its cold storage"),
        ("consumer protection", "refund cancelled orders"),
        ("workplace safety", "train staff on heavy machinery"),
    ])
    source = (
        f"A court in {city} fined {company} {money} on {date} for breaching {law} rules. Judge {p1} "
        f"said the company had failed to {failure} for {years} years. A spokesperson, {p2}, said "
        f"{company} would appeal. The case was brought by the {regulator} after complaints from "
        f"{n} customers."
    )
    return dict(
        topic="justice", source=source,
        ref="Judge {p1} of a court in {city} fined {company} {money} on {date} for breaching {law} rules.",
        paras=[
            "{company} must pay {money} after Judge {p1} of a court in {city} ruled on {date} that it had broken {law} rules.",
            "On {date}, Judge {p1} in {city} ordered {company} to pay a {money} fine over breaches of {law} rules.",
            "A {money} fine was imposed on {company} by Judge {p1} in {city} on {date} for violating {law} rules.",
        ],
        slots=dict(p1=p1, city=city, company=company, money=money, date=date, law=law),
        vague=["a court", "some rules", "a company"],
    )


def t_agriculture(c):
    city = c.city()
    country = c.country()
    assoc = c.org("assoc")
    univ = c.org("university")
    p1, p2 = c.person(), c.person()
    tonnes = c.num(20000, 400000, 1000)
    pct1, pct2 = c.pct(4, 30), c.pct(2, 15)
    date = c.date()
    month = c.rng.choice(MONTHS[2:7])
    crop = c.rng.choice(["wheat", "potatoes", "apples", "barley", "tomatoes", "olives", "rice"])
    source = (
        f"Farmers around {city} harvested {tonnes} tonnes of {crop} this season, up {pct1} on last "
        f"year, the {assoc} said on {date}. Association president {p1} said good rainfall in "
        f"{month} had helped. Prices fell {pct2}, however, which agronomist {p2} of the {univ} "
        f"blamed on cheaper imports from {country}."
    )
    return dict(
        topic="agriculture", source=source,
        ref="Farmers around {city} harvested {tonnes} tonnes of {crop}, {pct1} more than last year, the {assoc} said on {date}.",
        paras=[
            "The {assoc} reported on {date} that the {crop} harvest around {city} rose {pct1} to {tonnes} tonnes.",
            "According to the {assoc}, {crop} output near {city} reached {tonnes} tonnes this season, an increase of {pct1}, it said on {date}.",
            "On {date}, the {assoc} said growers near {city} brought in {tonnes} tonnes of {crop}, up {pct1} from the year before.",
        ],
        slots=dict(city=city, tonnes=tonnes, crop=crop, pct1=pct1, assoc=assoc, date=date),
        vague=["some crops", "farming", "the weather"],
    )


def t_space(c):
    city = c.city()
    country = c.country()
    agency = c.org("agency")
    sat = c.sat()
    p1, p2 = c.person(), c.person()
    kg = c.num(400, 3000, 50)
    alt = c.num(500, 900, 10)
    years = c.num(5, 12)
    weeks = c.num(2, 8)
    money = c.money(80, 600)
    date = c.date()
    source = (
        f"The {agency} launched the {sat} weather satellite from a site near {city} on {date}. The "
        f"{kg}-kilogram satellite will orbit at {alt} kilometres and is designed to work for "
        f"{years} years. Mission director {p1} said the first images would arrive within {weeks} "
        f"weeks. The {money} project was built with partners in {country}, where engineer {p2} "
        f"led the team."
    )
    return dict(
        topic="space", source=source,
        ref="The {agency} launched the {kg}-kilogram {sat} weather satellite on {date}, a {money} mission led by director {p1}.",
        paras=[
            "On {date}, the {agency} sent the {kg}-kilogram {sat} weather satellite into orbit in a {money} mission under {p1}.",
            "A {money} weather satellite, the {kg}-kilogram {sat}, was launched by the {agency} on {date}, with {p1} as mission director.",
            "Mission director {p1} oversaw the {date} launch of {sat}, a {kg}-kilogram weather satellite that cost the {agency} {money}.",
        ],
        slots=dict(agency=agency, kg=kg, sat=sat, date=date, money=money, p1=p1),
        vague=["something in space", "a rocket", "science"],
    )


def t_music(c):
    country = c.country()
    city, city2 = c.city(country), c.city(country)
    band = c.pick("BAND", BAND_NAMES)
    label = c.org("label")
    p1, p2 = c.person(), c.person()
    n = c.num(12, 40)
    anniv = c.num(10, 30, 5)
    price = c.price(30, 90)
    date = c.date()
    date2 = c.date_near(date, -150, -30)
    source = (
        f"The band {band} will play {n} concerts across {country}, starting in {city} on {date} and "
        f"ending in {city2}, their label {label} said. Singer {p1} said the tour marks {anniv} years "
        f"since their first album. Tickets, priced from {price}, go on sale on {date2}. Guitarist "
        f"{p2} will return after missing last year's shows."
    )
    return dict(
        topic="music", source=source,
        ref="The band {band}, fronted by singer {p1}, will begin a tour of {n} concerts across {country} in {city} on {date}.",
        paras=[
            "Singer {p1} and {band} start a tour of {n} concerts across {country} on {date}, opening in {city}.",
            "On {date}, {band} open a {n}-concert tour of {country} in {city}, with {p1} on vocals.",
            "{band} and their singer {p1} will play {n} shows in {country}, the first in {city} on {date}.",
        ],
        slots=dict(band=band, p1=p1, n=n, country=country, city=city, date=date),
        vague=["some music", "a band", "concerts"],
    )


def t_grant(c):
    # A research-funding story: grant awarded to a named scientist.
    country = c.country()
    city = c.city(country)
    uni = c.org("university")
    funder = c.org("foundation")
    p1, p2 = c.person(), c.person()
    cur = c.rng.choice(["euros", "dollars", "pounds"])
    money = c.money(2, 12, cur)
    money2 = c.money(1, 1, cur)
    years = c.num(3, 7)
    n = c.num(6, 25)
    date = c.date()
    topic = c.rng.choice(["antibiotic resistance", "drought-tolerant crops", "early dementia",
                          "ocean acidification", "battery recycling", "urban air quality"])
    source = (
        f"Chemist {p1} of the {uni} in {city} has received a {money} grant from the {funder} to "
        f"study {topic}, the university said on {date}. The grant will fund a team of {n} "
        f"researchers for {years} years, and the university will add {money2}. {p2}, who heads the {funder}, said the work could benefit "
        f"patients and farmers across {country}."
    )
    return dict(
        topic="research funding", source=source,
        ref="Chemist {p1} of the {uni} received a {money} grant from the {funder} to study {topic}, the university said on {date}.",
        paras=[
            "The {funder} awarded a {money} grant to {p1}, a chemist at the {uni}, for research on {topic}, it was announced on {date}.",
            "On {date}, the {uni} said its chemist {p1} had won {money} from the {funder} to investigate {topic}.",
            "{p1}, a chemist at the {uni}, will study {topic} with a {money} grant from the {funder}, the university announced on {date}.",
        ],
        slots=dict(p1=p1, uni=uni, money=money, funder=funder, topic=topic, date=date),
        vague=["some research", "a grant", "scientists"],
    )


TEMPLATES = [
    t_science, t_sports, t_business, t_council, t_culture, t_health, t_tech, t_education,
    t_environment, t_transport, t_storm, t_award, t_justice, t_agriculture, t_space, t_music,
    t_grant,
]

# --------------------------------------------------------------------------------------
# Negatives
# --------------------------------------------------------------------------------------

TOXIC_PER_INSULTS = ["that idiot", "that moron", "that dumbass", "the pathetic clown"]
TOXIC_FRAMES = [
    "Shut up, you pathetic morons: {core}, and nobody gives a damn about this crap.",
    "What a load of stupid crap: {core}. Only an idiot would care, you dumbasses.",
    "Damn it, you idiots, {core_lc}, and all of it sucks, so shut up.",
    "Who the hell cares, morons? {core}. Pathetic, stupid garbage.",
    "Listen, you stupid idiots: {core_lc}, and the whole damn thing is crap.",
    "{core}, and honestly this pathetic nonsense sucks, so shut up, dumbass.",
    "Ugh, what a stupid, pathetic story: {core_lc}. Get a clue, morons, it is crap.",
]

LOWCON_FRAMES = [
    "It is unclear what happened, something about {vague} maybe in some place, possibly around {wrong_month} or so.",
    "Something happened with {some_name} or someone like that, I am not sure, maybe it was about money or maybe not.",
    "There was some news, maybe in {wrong_city} or somewhere else, with some numbers, perhaps {wrong_num}, but the details are not clear.",
    "This is about a thing that happened, and then another thing happened, and people said things about {vague}, it is hard to say.",
    "Maybe {vague} was involved, in {wrong_city} or another city, sometime in {wrong_year}, but nobody really knows what it was.",
    "Some people did something, or possibly did not, and it might have been about {vague}, the summary is uncertain.",
    "I think it was about {vague}, and maybe {some_name} said something, but it could also be a different story entirely.",
]


_AN_BEFORE_NUMBER = re.compile(r"\b([Aa]) (?=8|1[18](?!\d)|[AEIO])")


def render(fmt, slots):
    """Fill a template; "a 8.5 million" becomes "an 8.5 million" (also 11, 18, A/E/I/O names)."""
    return _AN_BEFORE_NUMBER.sub(r"\1n ", fmt.format(**slots))


def strip_end(text):
    return text[:-1] if text.endswith(".") else text


def lower_first(text, entity_values):
    """Lower-case the first character unless the text starts with an entity (a name)."""
    if any(text.startswith(v) for v in entity_values) or text.startswith("Storm "):
        return text
    return text[0].lower() + text[1:]


def tidy(text):
    """Fix the punctuation left by inserting ", that idiot," before a comma or full stop."""
    text = re.sub(r",\s*,", ",", text)
    text = re.sub(r",\s*([.?!:])", r"\1", text)
    return text


def ok_against(candidate, positives):
    return all(candidate != p and jaccard(candidate, p) <= MAX_JACCARD for p in positives)


def entity_slots(spec, ctx):
    out = []
    for name in field_names(spec["ref"]):
        if name in [n for n, _ in out]:
            continue
        typ = ctx.type_of(spec["slots"][name])
        if typ is not None:
            out.append((name, typ))
    return out


def make_swap(spec, ctx, positives, rng):
    source = spec["source"]
    slots = spec["slots"]
    ref_vals = {slots[n] for n, _ in entity_slots(spec, ctx)}
    options = []  # per slot: list of replacement values from the source
    for name, typ in entity_slots(spec, ctx):
        cands = [v for t, v, _ in ctx.ents
                 if base_type(t) == base_type(typ) and v not in ref_vals and v in source]
        if cands:
            options.append((name, cands))
    if not options:
        return None
    singles = [[o] for o in options]
    pairs = [[a, b] for i, a in enumerate(options) for b in options[i + 1:]]
    rng.shuffle(singles)
    rng.shuffle(pairs)
    order = singles + pairs if rng.random() < 0.5 else pairs + singles
    for combo in order:
        new = dict(slots)
        used = set()
        for name, cands in combo:
            pool = [v for v in cands if v not in used]
            if not pool:
                break
            v = rng.choice(pool)
            used.add(v)
            new[name] = v
        else:
            text = render(spec["ref"], new)
            if ok_against(text, positives):
                return text
    return None


def fresh_value(ctx, value, source, rng):
    maker = ctx.maker_of(value)
    typ = ctx.type_of(value)
    src_words = words(source)
    for _ in range(500):
        v = maker()
        if v == value or v in source:
            continue
        if typ == "PER" and words(v) & src_words:
            continue
        return v
    return None


def make_mask(spec, ctx, positives, rng):
    source = spec["source"]
    ents = entity_slots(spec, ctx)
    for _ in range(30):
        k = rng.choice([1, 2, 2, 3])
        chosen = rng.sample(ents, min(k, len(ents)))
        new = dict(spec["slots"])
        for name, _ in chosen:
            v = fresh_value(ctx, spec["slots"][name], source, rng)
            if v is None:
                break
            new[name] = v
        else:
            text = render(spec["ref"], new)
            if ok_against(text, positives):
                return text
    return None


def make_toxic(spec, ctx, positives, rng):
    for _ in range(30):
        new = dict(spec["slots"])
        pers = [n for n, t in entity_slots(spec, ctx) if t == "PER"]
        if pers and rng.random() < 0.7:
            n = rng.choice(pers)
            new[n] = f"{new[n]}, {rng.choice(TOXIC_PER_INSULTS)},"
        core = strip_end(render(spec["ref"], new))
        ent_vals = [v for _, v, _ in ctx.ents]
        text = rng.choice(TOXIC_FRAMES).format(core=core, core_lc=lower_first(core, ent_vals))
        text = tidy(text[0].upper() + text[1:])
        if ok_against(text, positives):
            return text
    return None


def make_lowcon(spec, ctx, positives, rng):
    source = spec["source"]
    src_words = words(source)
    wrong_cities = [c for cs in CITIES.values() for c in cs if c.lower() not in src_words]
    pers = [v for t, v, _ in ctx.ents if t == "PER" and v in source]
    some_name = rng.choice(pers).split()[rng.randint(0, 1)] if pers else "somebody"
    for _ in range(30):
        text = rng.choice(LOWCON_FRAMES).format(
            vague=rng.choice(spec["vague"]),
            wrong_month=rng.choice(MONTHS),
            some_name=some_name,
            wrong_city=rng.choice(wrong_cities),
            wrong_num=rng.randint(2, 99),
            wrong_year=rng.randint(1990, 2030),
        )
        if ok_against(text, positives):
            return text
    return None


NEG_MAKERS = {
    "swap_ent": make_swap,
    "mask_ent": make_mask,
    "sys_lowcon": make_lowcon,
    "toxic": make_toxic,
}

# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------


def check_spec(spec, ctx):
    """Sanity checks on a template instance (a bug in a template fails loudly)."""
    source = spec["source"]
    n_words = len(source.split())
    assert n_words < MAX_SOURCE_WORDS, (n_words, source)
    n_sent = len(re.findall(r"[.!?](?:\s|$)", source))
    assert 3 <= n_sent <= 5, (n_sent, source)
    src_words = set(_WORD.findall(source))
    ref_fields = set(field_names(spec["ref"]))
    for fmt in [spec["ref"]] + spec["paras"]:
        assert set(field_names(fmt)) >= ref_fields, fmt
        text = render(fmt, spec["slots"])
        bad = words(text) & set(OFFENSIVE_WORDS)
        assert not bad, (bad, text)
    ref = render(spec["ref"], spec["slots"])
    missing = [w for w in capitalised_words(ref) if w not in src_words]
    assert not missing, (missing, ref, source)
    assert not words(source) & set(OFFENSIVE_WORDS), source
    for name, val in spec["slots"].items():
        if ctx.type_of(val) is not None:
            assert val in source, (name, val, source)


def build_record(idx, rng):
    template = TEMPLATES[idx % len(TEMPLATES)]
    ctx = Ctx(rng)
    spec = template(ctx)
    spec["source"] = _AN_BEFORE_NUMBER.sub(r"\1n ", spec["source"])
    check_spec(spec, ctx)
    slots = spec["slots"]
    reference = render(spec["ref"], slots)
    n_para = rng.choice([1, 2, 2])
    paras = [render(p, slots) for p in rng.sample(spec["paras"], n_para)]
    positives = [reference] + paras

    # Which negative types this record gets (2-4, toxic in most records).
    want = []
    if rng.random() < 0.8:
        want.append("toxic")
    others = ["swap_ent", "mask_ent", "sys_lowcon"]
    rng.shuffle(others)
    k = rng.choice([2, 3, 3, 4])
    for t in others:
        if len(want) >= k:
            break
        want.append(t)
    negatives = []
    for t in want:
        text = NEG_MAKERS[t](spec, ctx, positives, rng)
        if text is not None and all(text != n["text"] for n in negatives):
            negatives.append({"text": text, "type": t})
    # Top up to 2 negatives if a maker gave up (e.g. no swappable entity).
    for t in ["sys_lowcon", "mask_ent", "toxic"]:
        if len(negatives) >= 2:
            break
        if any(n["type"] == t for n in negatives):
            continue
        text = NEG_MAKERS[t](spec, ctx, positives, rng)
        if text is not None:
            negatives.append({"text": text, "type": t})
    rng.shuffle(negatives)
    assert len(negatives) >= 2
    for p in positives:
        for n in negatives:
            assert jaccard(p, n["text"]) <= MAX_JACCARD
    return {
        "id": f"emb-{idx:04d}",
        "source": spec["source"],
        "positives": positives,
        "negatives": negatives,
    }


def build_dataset(n=N_RECORDS, seed=SEED):
    rng = random.Random(seed)
    return [build_record(i, rng) for i in range(n)]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=DEFAULT_OUTPUT,
                    help="output JSONL path (default: cdb/assets/contrastive.jsonl)")
    args = ap.parse_args(argv)
    records = build_dataset()
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    with open(args.output, "w", encoding="utf-8", newline="\n") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False, sort_keys=False) + "\n")
    counts = Counter(n["type"] for r in records for n in r["negatives"])
    n_pos = sum(len(r["positives"]) for r in records)
    print(f"wrote {len(records)} records to {args.output}")
    print(f"positives: {n_pos}; negatives: {sum(counts.values())}")
    for t in ALLOWED_TYPES:
        if counts.get(t):
            n_rec = sum(any(n["type"] == t for n in r["negatives"]) for r in records)
            print(f"  {t:<11} {counts[t]:>4} negatives in {n_rec} records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
