"""Raw line parsers and file resolution of `pipelines.sources`."""

import os
import pickle

import pytest
import rawdata

from pipelines import sources
from pipelines.sources import BadRecord


def _parse_file(table, path):
    """Parses a file the way the pipeline does: strip terminators, skip header."""
    good, bad = [], []
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    for number, raw in enumerate(lines, start=1):
        if table.header and number == 1:
            continue
        line = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            record = table.parse(line)
        except BadRecord as err:
            bad.append((number, raw, str(err)))
            continue
        if record is not None:
            good.append(record)
    return good, bad


# --- whole fixture files round trip --------------------------------------


@pytest.mark.parametrize(
    "name, writer",
    [
        ("ml-100k", rawdata.write_ml100k),
        ("ml-1m", rawdata.write_ml1m),
        ("ml-20m", rawdata.write_ml20m),
        ("yelp", rawdata.write_yelp),
    ],
)
def test_fixture_files_parse_to_expected_records(tmp_path, name, writer):
    summary = writer(tmp_path, num_users=12, num_items=25, per_user=(3, 9), seed=3)
    source = sources.get_source(name)
    files = sources.resolve_files(source, str(tmp_path))
    assert files == summary["paths"]
    interactions, bad = _parse_file(source.interactions, files["interactions"])
    assert bad == []
    assert interactions == summary["interactions"]
    items, bad = _parse_file(source.items, files["items"])
    assert bad == [] and items == summary["items"]
    if source.users is not None:
        users, bad = _parse_file(source.users, files["users"])
        assert bad == [] and users == summary["users"]
    # Types the pipeline relies on.
    user_id, item_id, ts, rating = interactions[0]
    assert (type(user_id), type(item_id), type(ts), type(rating)) == (
        str,
        str,
        int,
        float,
    )


def test_fixture_bad_lines_are_found_at_their_line_numbers(tmp_path):
    bad_lines = ["1::2::3", b"\xff\xfe::1::4::978300000", "7::x::4::978300000"]
    summary = rawdata.write_ml1m(tmp_path, num_users=5, per_user=4, bad_lines=bad_lines)
    table = sources.get_source("ml-1m").interactions
    good, bad = _parse_file(table, summary["paths"]["interactions"])
    assert len(good) == 5 * 4
    # 20 good lines, 3 bad: inserted before good lines 5, 10, 15 -> lines 6, 12, 18.
    assert [(n, raw) for n, raw, _ in bad] == summary["bad_lines"]
    assert [n for n, _, _ in bad] == [6, 12, 18]
    assert "expected 4 '::'-separated fields, got 3" == bad[0][2]
    assert "non-numeric UserID" in bad[1][2]
    assert "non-numeric MovieID 'x'" == bad[2][2]


def test_ml1m_fixture_has_equal_timestamps_for_first_user(tmp_path):
    summary = rawdata.write_ml1m(tmp_path)
    times = [ts for u, _, ts, _ in summary["interactions"] if u == "1"]
    assert len(times) - len(set(times)) == 2  # three ratings share one second


def test_same_seed_same_files_different_seed_different_files(tmp_path):
    a = rawdata.write_yelp(tmp_path / "a", seed=5)
    b = rawdata.write_yelp(tmp_path / "b", seed=5)
    c = rawdata.write_yelp(tmp_path / "c", seed=6)

    def read(summary):
        with open(summary["paths"]["interactions"], "rb") as f:
            return f.read()

    assert read(a) == read(b) != read(c)


# --- ML-1M -----------------------------------------------------------------


def test_ml1m_rating_line():
    assert sources.parse_ml1m_rating(b"12::1097::4::978301953") == (
        "12",
        "1097",
        978301953,
        4.0,
    )


def test_ml1m_movie_latin1_title_with_commas_and_colons():
    line = "73::Misérables, Les (1995)::Drama|War".encode("latin-1")
    assert b"\xe9" in line  # é is one latin-1 byte, not UTF-8
    assert sources.parse_ml1m_movie(line) == ("73", ("Drama", "War"))
    line = b'750::Dr. Strangelove or: "How I" Learned (1963)::Sci-Fi|War'
    assert sources.parse_ml1m_movie(line) == ("750", ("Sci-Fi", "War"))
    # A title that itself contains '::' still gives id first, genres last.
    assert sources.parse_ml1m_movie(b"5::A::B (1999)::Comedy") == ("5", ("Comedy",))


def test_ml1m_user_line_drops_zip():
    record = sources.parse_ml1m_user(b"13::M::56::16::55117-1234")
    assert record == ("13", {"gender": "M", "age": "56", "occupation": "16"})


def test_ml1m_attributes_cover_documented_classes():
    attrs = sources.get_source("ml-1m").attributes
    assert attrs["gender"] == ("F", "M")
    assert attrs["age"] == ("1", "18", "25", "35", "45", "50", "56")
    assert attrs["occupation"] == tuple(str(i) for i in range(21))


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"12::1097::4", "expected 4 '::'-separated fields, got 3"),
        (b"12::1097::4::978301953::9", "expected 4 '::'-separated fields, got 5"),
        (b"12,1097,4,978301953", "expected 4 '::'-separated fields, got 1"),
        (b"u12::1097::4::978301953", "non-numeric UserID 'u12'"),
        (b"12::10 97::4::978301953", "non-numeric MovieID '10 97'"),
        (b"12::1097::four::978301953", "rating must be an integer 1-5, got 'four'"),
        (b"12::1097::6::978301953", "rating must be an integer 1-5, got '6'"),
        (b"12::1097::0::978301953", "rating must be an integer 1-5, got '0'"),
        (b"12::1097::4.5::978301953", "rating must be an integer 1-5, got '4.5'"),
        (b"12::1097::4::-5", "timestamp must be a non-negative integer"),
        (b"12::1097::4::2000-01-01", "timestamp must be a non-negative integer"),
        ("\u00b2::1097::4::978301953".encode("latin-1"), "non-numeric UserID '²'"),
    ],
)
def test_ml1m_bad_ratings(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml1m_rating(line)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"13::M::56::16", "expected 5 '::'-separated fields, got 4"),
        (b"13::X::56::16::55117", "gender must be 'F' or 'M', got 'X'"),
        (b"13::M::30::16::55117", "age must be one of the bucket codes 1, 18, 25"),
        (b"13::M::56::21::55117", "occupation must be an integer 0-20, got '21'"),
        (b"x13::M::56::16::55117", "non-numeric UserID 'x13'"),
    ],
)
def test_ml1m_bad_users(line, reason):
    with pytest.raises(BadRecord, match=None) as err:
        sources.parse_ml1m_user(line)
    assert reason in str(err.value)


def test_ml1m_bad_movies():
    with pytest.raises(BadRecord, match="expected 3 '::'-separated fields"):
        sources.parse_ml1m_movie(b"1::Toy Story (1995)")
    with pytest.raises(BadRecord, match="non-numeric MovieID 'one'"):
        sources.parse_ml1m_movie(b"one::Toy Story (1995)::Comedy")


# --- ML-100K ---------------------------------------------------------------

FLAGS_NONE = "|".join(["0"] * 19)


def _flags(*genres):
    return "|".join("1" if g in genres else "0" for g in rawdata.ML100K_GENRES)


def test_ml100k_rating_line():
    assert sources.parse_ml100k_rating(b"196\t242\t3\t881250949") == (
        "196",
        "242",
        881250949,
        3.0,
    )
    assert sources.parse_ml100k_rating(b"1\t2\t5\t0\r") == ("1", "2", 0, 5.0)


def test_ml100k_item_reads_id_and_last_19_flags_only():
    parse = sources.parse_ml100k_item
    line = (
        "1|Toy Story (1995)|01-Jan-1995||http://us.imdb.com/M/title-exact?Toy%20Story%20(1995)|"
        "0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0"
    )
    assert parse(line.encode("latin-1")) == ("1", ("Animation", "Children's", "Comedy"))
    # latin-1 title, empty release date, empty URL
    line = f"73|Misérables, Les (1995)|||| {_flags('Drama', 'War')}".replace("| ", "|")
    assert parse(line.encode("latin-1")) == ("73", ("Drama", "War"))
    # a title holding '|' still gives the id and the last 19 flags
    assert parse(f"5|A|B (1999)|01-Jan-1999||url|{_flags('Western')}".encode()) == (
        "5",
        ("Western",),
    )
    # the first and the last flag are read at the right positions
    assert parse(f"6|t|d||u|{_flags('Action', 'Western')}".encode()) == (
        "6",
        ("Action", "Western"),
    )


def test_ml100k_unknown_flag_means_no_genre():
    parse = sources.parse_ml100k_item
    # GroupLens's movie 267 is flagged only "unknown": no genres, like ML-20M's
    # "(no genres listed)".
    assert parse(f"267|unknown||||{_flags('unknown')}".encode()) == ("267", ())
    assert parse(f"268|t|d||u|{FLAGS_NONE}".encode()) == ("268", ())
    # "unknown" next to real genres: the real ones are kept, "unknown" never.
    assert parse(f"269|t|d||u|{_flags('unknown', 'Drama')}".encode()) == ("269", ("Drama",))


def test_ml100k_user_age_buckets_and_occupation_words():
    parse = sources.parse_ml100k_user
    assert parse(b"1|24|M|technician|85711") == (
        "1",
        {"gender": "M", "age": "18", "occupation": "technician"},
    )
    assert parse(b"2|53|F|none|T8H1N") == ("2", {"gender": "F", "age": "50", "occupation": "none"})
    years = [0, 7, 17, 18, 24, 25, 34, 35, 44, 45, 49, 50, 55, 56, 73, 120]
    codes = ["1", "1", "1", "18", "18", "25", "25", "35", "35", "45", "45", "50", "50", "56"]
    codes += ["56", "56"]
    got = [parse(f"3|{y}|F|other|00000".encode())[1]["age"] for y in years]
    assert got == codes
    assert [sources.age_bucket(y) for y in years] == codes


def test_ml100k_attributes_share_the_ml1m_age_and_gender_classes():
    attrs = sources.get_source("ml-100k").attributes
    ml1m = sources.get_source("ml-1m").attributes
    assert attrs["gender"] == ml1m["gender"] and attrs["age"] == ml1m["age"]
    assert attrs["occupation"] == rawdata.ML100K_OCCUPATIONS
    assert len(attrs["occupation"]) == 21 and "none" in attrs["occupation"]


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"196\t242\t3", "expected 4 tab-separated fields, got 3"),
        (b"196 242 3 881250949", "expected 4 tab-separated fields, got 1"),
        (b"196\t242\t3\t881250949\t1", "expected 4 tab-separated fields, got 5"),
        (b"u196\t242\t3\t881250949", "non-numeric user id 'u196'"),
        (b"196\t-242\t3\t881250949", "non-numeric item id '-242'"),
        (b"196\t242\t0\t881250949", "rating must be an integer 1-5, got '0'"),
        (b"196\t242\t3.5\t881250949", "rating must be an integer 1-5, got '3.5'"),
        (b"196\t242\t\t881250949", "rating must be an integer 1-5, got ''"),
        (b"196\t242\t3\t8812.5", "timestamp must be a non-negative integer"),
    ],
)
def test_ml100k_bad_ratings(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml100k_rating(line)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "line, reason",
    [
        (
            "1|Toy Story (1995)|01-Jan-1995||url|0|0|1",
            "expected 24 '|'-separated fields (id|title|release date|video release date|"
            "URL|19 genre flags), got 8",
        ),
        (f"x1|t|d||u|{FLAGS_NONE}", "non-numeric movie id 'x1'"),
        (f"1|t|d||u|{FLAGS_NONE[:-1]}2", "genre flag 'Western' must be 0 or 1, got '2'"),
        (f"1|t|d||u|{FLAGS_NONE}|", "genre flag 'Western' must be 0 or 1, got ''"),
        (f"1|t|d||u|yes|{FLAGS_NONE[2:]}", "genre flag 'unknown' must be 0 or 1, got 'yes'"),
    ],
)
def test_ml100k_bad_items(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml100k_item(line.encode("latin-1"))
    assert str(err.value) == reason


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"1|24|M|technician", "expected 5 '|'-separated fields, got 4"),
        (b"1::24::M::technician::85711", "expected 5 '|'-separated fields, got 1"),
        (b"one|24|M|technician|85711", "non-numeric user id 'one'"),
        (b"1|24.5|M|technician|85711", "age must be a whole number of years, got '24.5'"),
        (b"1||M|technician|85711", "age must be a whole number of years, got ''"),
        (b"1|-3|M|technician|85711", "age must be a whole number of years, got '-3'"),
        (b"1|24|m|technician|85711", "gender must be 'F' or 'M', got 'm'"),
        (b"1|24|X|technician|85711", "gender must be 'F' or 'M', got 'X'"),
        (b"1|24|M|Technician|85711", "occupation must be one of the 21 ml-100k occupations"),
        (b"1|24|M|17|85711", "got '17'"),  # an ML-1M occupation code is not a word
    ],
)
def test_ml100k_bad_users(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml100k_user(line)
    assert reason in str(err.value)


def test_ml100k_fixture_bad_lines_are_found_at_their_line_numbers(tmp_path):
    bad_lines = ["196\t242\t3", "196\t242\tfive\t881250949", "x\t1\t4\t881250949"]
    summary = rawdata.write_ml100k(tmp_path, num_users=5, per_user=4, bad_lines=bad_lines)
    table = sources.get_source("ml-100k").interactions
    good, bad = _parse_file(table, summary["paths"]["interactions"])
    assert good == summary["interactions"]
    assert [(n, raw) for n, raw, _ in bad] == summary["bad_lines"]
    assert [n for n, _, _ in bad] == [6, 12, 18]
    assert [reason for _, _, reason in bad] == [
        "expected 4 tab-separated fields, got 3",
        "rating must be an integer 1-5, got 'five'",
        "non-numeric user id 'x'",
    ]


def test_ml100k_fixture_covers_the_edge_cases(tmp_path):
    summary = rawdata.write_ml100k(tmp_path, num_users=20, num_items=40)
    with open(summary["paths"]["items"], "rb") as f:
        item_lines = f.read().splitlines()
    flags = [line.split(b"|")[-19:] for line in item_lines]
    assert any(f[0] == b"1" and b"1" not in f[1:] for f in flags)  # unknown only
    assert any(b"1" not in f for f in flags)  # no flag at all
    assert any(f[0] == b"1" and b"1" in f[1:] for f in flags)  # unknown + real genres
    assert any(line.split(b"|")[2] == b"" for line in item_lines)  # empty release date
    assert any(b"\xe9" in line for line in item_lines)  # latin-1 title
    with open(summary["paths"]["users"], "rb") as f:
        user_lines = f.read().splitlines()
    assert any(not line.split(b"|")[4].isdigit() for line in user_lines)  # zip with letters
    assert {a["age"] for _, a in summary["users"]} == set(sources.ML1M_ATTRIBUTES["age"])


def test_resolve_files_ml100k(tmp_path):
    rawdata.write_ml100k(tmp_path, num_users=3, per_user=2)
    files = sources.resolve_files(sources.get_source("ml-100k"), str(tmp_path))
    assert files == {
        r: str(tmp_path / f)
        for r, f in (("interactions", "u.data"), ("items", "u.item"), ("users", "u.user"))
    }
    os.remove(tmp_path / "u.user")
    with pytest.raises(FileNotFoundError) as err:
        sources.resolve_files(sources.get_source("ml-100k"), str(tmp_path))
    message = str(err.value)
    assert f"missing: {tmp_path / 'u.user'}" in message
    assert "u.data, u.item, u.user" in message and "ml-100k.zip" in message


# --- ML-20M ----------------------------------------------------------------


def test_ml20m_half_star_ratings():
    parse = sources.parse_ml20m_rating
    assert parse(b"7,2571,4.5,1112486027") == ("7", "2571", 1112486027, 4.5)
    assert parse(b"7,2571,0.5,1112486027")[3] == 0.5
    assert parse(b"7,2571,5.0,1112486027")[3] == 5.0
    assert parse(b"7,2571,3,1112486027")[3] == 3.0


def test_ml20m_quoted_titles_and_no_genres():
    parse = sources.parse_ml20m_movie
    assert parse(b'11,"American President, The (1995)",Comedy|Drama|Romance') == (
        "11",
        ("Comedy", "Drama", "Romance"),
    )
    assert parse('73,"Misérables, Les (1995)",Drama|War'.encode()) == (
        "73",
        ("Drama", "War"),
    )
    assert parse(b'3,"""Great Performances"" Cats (1998)",Musical') == (
        "3",
        ("Musical",),
    )
    assert parse(b"131262,Innocence (2014),(no genres listed)") == ("131262", ())


@pytest.mark.parametrize(
    "line, reason",
    [
        (b"7,2571,4.5", "expected 4 ','-separated fields, got 3"),
        (
            b"7,2571,4.25,1112486027",
            "rating must be a half star in 0.5-5.0, got '4.25'",
        ),
        (b"7,2571,0.0,1112486027", "rating must be a half star in 0.5-5.0, got '0.0'"),
        (b"7,2571,5.5,1112486027", "rating must be a half star in 0.5-5.0, got '5.5'"),
        (b"7,2571,nan,1112486027", "rating must be a half star in 0.5-5.0, got 'nan'"),
        (b"7,2571,good,1112486027", "non-numeric rating 'good'"),
        (b"seven,2571,4.5,1112486027", "non-numeric userId 'seven'"),
        (b"7,2571,4.5,1.1e9", "timestamp must be a non-negative integer"),
        (
            b"7,25\xff71,4.5,1112486027",
            "undecodable bytes at byte 4: b'\\xff' is not valid UTF-8",
        ),
        # The header is a bad record if a caller forgets to skip it.
        (b"userId,movieId,rating,timestamp", "non-numeric userId 'userId'"),
    ],
)
def test_ml20m_bad_ratings(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml20m_rating(line)
    assert reason in str(err.value)


@pytest.mark.parametrize(
    "line, reason",
    [
        (
            b"11,American President, The (1995),Comedy",
            "expected 3 CSV fields (movieId,title,genres), got 4",
        ),
        (b'11,"American President (1995),Comedy', "malformed CSV"),
        (b"x11,Title (1995),Comedy", "non-numeric movieId 'x11'"),
        (b"11,Caf\xe9 (1995),Comedy", "undecodable bytes at byte 6"),
    ],
)
def test_ml20m_bad_movies(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_ml20m_movie(line)
    assert reason in str(err.value)


# --- Yelp ------------------------------------------------------------------

REVIEW = (
    '{"review_id":"Qw3rTy7uIo9pAs1dFg2hJk","user_id":"Zx8cVb5nMl4kJh3gFd2sA_",'
    '"business_id":"Pq1wE2rT3yU4iO5pA6sD7f","stars":4.0,"useful":2,"funny":0,"cool":1,'
    '"text":"Great \\"brunch\\", slow service.\\nWould return.","date":"2019-03-14 18:05:42"}'
)
BUSINESS = (
    '{"business_id":"Pq1wE2rT3yU4iO5pA6sD7f","name":"Corner Café","city":"Tucson",'
    '"state":"AZ","stars":3.5,"review_count":87,"is_open":1,'
    '"attributes":{"NoiseLevel":"u\'average\'"},'
    '"categories":"Restaurants, Breakfast & Brunch, Coffee & Tea","hours":null}'
)


def test_yelp_review_date_is_utc_unix_seconds():
    record = sources.parse_yelp_review(REVIEW.encode())
    # `date -u -d "2019-03-14 18:05:42" +%s` = 1552586742
    assert record == (
        "Zx8cVb5nMl4kJh3gFd2sA_",
        "Pq1wE2rT3yU4iO5pA6sD7f",
        1552586742,
        4.0,
    )
    epoch = REVIEW.replace("2019-03-14 18:05:42", "1970-01-02 00:00:01")
    assert sources.parse_yelp_review(epoch.encode())[2] == 86401


def test_yelp_business_categories():
    parse = sources.parse_yelp_business
    assert parse(BUSINESS.encode()) == (
        "Pq1wE2rT3yU4iO5pA6sD7f",
        ("Restaurants", "Breakfast & Brunch", "Coffee & Tea"),
    )
    assert (
        parse(BUSINESS.replace('"Restaurants, Breakfast & Brunch, Coffee & Tea"', "null").encode())[
            1
        ]
        == ()
    )
    assert (
        parse(BUSINESS.replace('"Restaurants, Breakfast & Brunch, Coffee & Tea"', '""').encode())[1]
        == ()
    )
    assert parse(b'{"business_id":"a-_b","categories":" Bars ,  Pizza"}') == (
        "a-_b",
        ("Bars", "Pizza"),
    )


@pytest.mark.parametrize(
    "line, reason",
    [
        (REVIEW[:-5], "broken JSON"),
        ("[1, 2]", "expected a JSON object, got list"),
        (
            REVIEW.replace('"user_id":"Zx8cVb5nMl4kJh3gFd2sA_",', ""),
            "missing key 'user_id'",
        ),
        (
            REVIEW.replace('"Pq1wE2rT3yU4iO5pA6sD7f"', "12345"),
            "business_id must be a non-empty string, got 12345",
        ),
        (
            REVIEW.replace('"Zx8cVb5nMl4kJh3gFd2sA_"', '""'),
            "user_id must be a non-empty string",
        ),
        (
            REVIEW.replace("2019-03-14 18:05:42", "2019-03-14T18:05:42Z"),
            "date must look like 'YYYY-MM-DD HH:MM:SS'",
        ),
        (
            REVIEW.replace("2019-03-14 18:05:42", "2019-02-30 18:05:42"),
            "invalid date '2019-02-30 18:05:42'",
        ),
        (REVIEW.replace(',"date":"2019-03-14 18:05:42"', ""), "missing key 'date'"),
        (
            REVIEW.replace('"stars":4.0', '"stars":"4"'),
            "stars must be a number, got '4'",
        ),
        (REVIEW.replace('"stars":4.0', '"stars":0.0'), "stars must be in 1-5, got 0.0"),
    ],
)
def test_yelp_bad_reviews(line, reason):
    with pytest.raises(BadRecord) as err:
        sources.parse_yelp_review(line.encode())
    assert reason in str(err.value)


def test_yelp_undecodable_and_bad_business():
    with pytest.raises(BadRecord, match="undecodable bytes at byte 2"):
        sources.parse_yelp_review(b'{"\xc3(":1}')
    with pytest.raises(BadRecord, match="categories must be a string or null, got list"):
        sources.parse_yelp_business(b'{"business_id":"abc","categories":["Bars"]}')
    with pytest.raises(BadRecord, match="missing key 'business_id'"):
        sources.parse_yelp_business(b'{"categories":"Bars"}')


# --- shared behaviour -------------------------------------------------------


@pytest.mark.parametrize("name", sources.SOURCE_NAMES)
def test_blank_lines_give_none_and_tables_pickle(name):
    source = sources.get_source(name)
    tables = [source.interactions, source.items] + ([source.users] if source.users else [])
    for table in tables:
        assert table.parse(b"") is None
        assert table.parse(b"   ") is None
        assert pickle.loads(pickle.dumps(table)).parse is table.parse
    assert source.homepage.startswith("https://")
    assert source.item_feature == ("category" if name == "yelp" else "genre")


def test_crlf_remainder_is_tolerated():
    assert sources.parse_ml1m_rating(b"1::2::3::4\r") == ("1", "2", 4, 3.0)


def test_get_source_unknown_name_lists_valid_names():
    with pytest.raises(
        ValueError,
        match="unknown raw source 'ml-25m'; valid names: ml-100k, ml-1m, ml-20m, yelp",
    ):
        sources.get_source("ml-25m")


# --- resolve_files ----------------------------------------------------------


def test_resolve_files_names_missing_and_empty(tmp_path):
    rawdata.write_ml1m(tmp_path, num_users=3, per_user=2)
    os.remove(tmp_path / "users.dat")
    open(tmp_path / "movies.dat", "wb").close()
    with pytest.raises(FileNotFoundError) as err:
        sources.resolve_files(sources.get_source("ml-1m"), str(tmp_path))
    message = str(err.value)
    assert f"missing: {tmp_path / 'users.dat'}" in message
    assert f"empty (0 bytes): {tmp_path / 'movies.dat'}" in message
    assert "ratings.dat" not in message.split("Expected")[0]  # present, not listed as a problem
    assert "ratings.dat, movies.dat, users.dat" in message
    assert "https://grouplens.org/datasets/movielens/" in message


def test_resolve_files_yelp_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        sources.resolve_files(sources.get_source("yelp"), str(tmp_path))
    message = str(err.value)
    for text in (
        f"missing: {tmp_path / 'yelp_academic_dataset_review.json'}",
        f"missing: {tmp_path / 'yelp_academic_dataset_business.json'}",
        "https://www.yelp.com/dataset",
        "JSON",
        f"in {tmp_path}",
    ):
        assert text in message


def test_resolve_files_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    rawdata.write_ml20m(tmp_path / "ml-20m", num_users=2, per_user=2)
    files = sources.resolve_files(sources.get_source("ml-20m"), "~/ml-20m")
    assert files == {
        "interactions": str(tmp_path / "ml-20m" / "ratings.csv"),
        "items": str(tmp_path / "ml-20m" / "movies.csv"),
    }
