"""The benchmark's source: an enterprise registry table in the local PostgreSQL.

Rows are generated with polars expressions only (no Python per row) from a row number and a few
hashes of it, so the same ``--rows`` always gives the same table. Credit codes are valid by
construction: both GB 32100 check characters are computed here and the result is checked with
``schemas.checks.uscc_expr`` before a chunk is loaded.
"""

from __future__ import annotations

import io
import logging
import time

import polars as pl
import psycopg

from schemas.checks import USCC_ALPHABET, _division_list, uscc_expr

__all__ = ["build_source", "enterprise_frame", "SOURCE_DDL"]

log = logging.getLogger(__name__)

SOURCE_DDL = """
CREATE TABLE enterprise (
    id bigint PRIMARY KEY,
    credit_code varchar(18) NOT NULL,
    name text NOT NULL,
    address text,
    reg_capital numeric(18, 2),
    established date,
    status varchar(8) NOT NULL,
    updated_at timestamptz NOT NULL
)
"""

_BASE36 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ORG_WEIGHTS = (3, 7, 9, 10, 5, 8, 4, 2)
_USCC_WEIGHTS = tuple(pow(3, i, 31) for i in range(17))

_CITIES = "嘉兴 杭州 宁波 温州 湖州 绍兴 金华 衢州 舟山 台州 丽水 上海 苏州 无锡 南京 合肥".split()
_WORDS = (
    "华信 宏达 金源 恒通 瑞丰 永安 天成 鑫盛 东方 中和 新元 博雅 海纳 正泰 明德 顺昌 "
    "长青 锦程 佳禾 联创 汇智 远航 盛世 富民 安康 同心 兴业 星辰 国泰 嘉和"
).split()
_TRADES = "科技 贸易 实业 建设 物流 食品 纺织 电子 医药 文化 机械 农业 餐饮 咨询 材料 能源".split()
_FORMS = ["有限公司", "股份有限公司", "有限责任公司", "合伙企业（有限合伙）"]
_DISTRICTS = "南湖区 秀洲区 海宁市 平湖市 桐乡市 嘉善县 海盐县 西湖区 滨江区 鄞州区".split()
_ROADS = "中山路 解放路 人民路 建设路 文化路 学院路 长水路 东升路 凌公塘路 南溪路 环城北路".split()
_STATUSES = ["存续", "在业", "吊销", "注销", "迁出"]


def _pick(choices: list[str], seed: int) -> pl.Expr:
    index = (pl.col("id").hash(seed) % len(choices)).cast(pl.Int64)
    return pl.lit(pl.Series(choices)).gather(index)


def _uscc() -> pl.Expr:
    """A valid credit code for each id: 9 (工商) 1 (企业), a division, an organisation code."""
    value_of = {c: v for v, c in enumerate(USCC_ALPHABET)}
    # positions 9-16: eight characters of the USCC alphabet, kept as their index in it
    body = [(pl.col("id").hash(100 + i) % 31).cast(pl.Int64) for i in range(8)]
    to_base36 = pl.Series([_BASE36.index(c) for c in USCC_ALPHABET], dtype=pl.Int64)
    org_sum = pl.sum_horizontal(
        [pl.lit(to_base36).gather(b) * w for b, w in zip(body, _ORG_WEIGHTS, strict=True)]
    )
    org_check_chars = "?123456789X0"
    org_check = pl.lit(org_check_chars).str.slice(11 - org_sum % 11, 1)
    org_check_value = pl.lit(pl.Series([value_of.get(c, 0) for c in org_check_chars])).gather(
        (11 - org_sum % 11).cast(pl.Int64)
    )
    division = _pick(_division_list(), 7)
    digits = [division.str.slice(i, 1).cast(pl.Int64) for i in range(6)]
    values = [pl.lit(9), pl.lit(1), *digits, *body, org_check_value]
    total = pl.sum_horizontal([v * w for v, w in zip(values, _USCC_WEIGHTS, strict=True)])
    check = pl.lit(USCC_ALPHABET).str.slice((31 - total % 31) % 31, 1)
    alphabet = pl.lit(USCC_ALPHABET)
    chars = [alphabet.str.slice(b, 1) for b in body]
    return pl.concat_str([pl.lit("91"), division, *chars, org_check, check])


def enterprise_frame(start: int, rows: int) -> pl.DataFrame:
    """Rows ``start`` .. ``start + rows - 1`` of the benchmark table."""
    base = pl.DataFrame({"id": pl.int_range(start + 1, start + rows + 1, eager=True)})
    capital_cents = pl.col("id").hash(3) % 10_000_000_000
    frame = base.select(
        pl.col("id"),
        _uscc().alias("credit_code"),
        pl.concat_str(
            [_pick(_CITIES, 11), _pick(_WORDS, 12), _pick(_TRADES, 13), _pick(_FORMS, 14)]
        ).alias("name"),
        # every 50th address is empty and every 97th is missing: both must survive a sync
        pl.when(pl.col("id") % 97 == 0)
        .then(None)
        .when(pl.col("id") % 50 == 0)
        .then(pl.lit(""))
        .otherwise(
            pl.concat_str(
                [
                    pl.lit("浙江省"),
                    _pick(_CITIES, 21),
                    pl.lit("市"),
                    _pick(_DISTRICTS, 22),
                    _pick(_ROADS, 23),
                    (pl.col("id").hash(24) % 2000 + 1).cast(pl.String),
                    pl.lit("号"),
                ]
            )
        )
        .alias("address"),
        pl.concat_str(
            [
                (capital_cents // 100).cast(pl.String),
                pl.lit("."),
                (capital_cents % 100).cast(pl.String).str.pad_start(2, "0"),
            ]
        ).alias("reg_capital"),
        (pl.lit(2_000).cast(pl.Int32) + (pl.col("id").hash(4) % 9_000).cast(pl.Int32))
        .cast(pl.Date)
        .alias("established"),
        _pick(_STATUSES, 5).alias("status"),
        # microseconds in 2024, spread evenly with the id so the cursor has few ties
        (
            pl.lit(1_704_067_200_000_000, dtype=pl.Int64)
            + pl.col("id") * 3_000_001
            + (pl.col("id").hash(6) % 1_000_000).cast(pl.Int64)
        )
        .cast(pl.Datetime("us", "UTC"))
        .alias("updated_at"),
    )
    bad = frame.select(uscc_expr("credit_code").is_not_null().sum()).item()
    if bad:
        raise AssertionError(f"{bad} generated credit codes fail the uscc check")
    return frame


def build_source(dsn: str, rows: int, chunk: int = 500_000) -> float:
    """(Re)create the ``enterprise`` table with ``rows`` rows; returns the seconds it took."""
    started = time.monotonic()
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS enterprise")
        conn.execute(SOURCE_DDL)
        for start in range(0, rows, chunk):
            frame = enterprise_frame(start, min(chunk, rows - start))
            buffer = io.BytesIO()
            frame.write_csv(buffer, include_header=False, null_value="\\N", quote_style="necessary")
            with conn.cursor() as cur:
                with cur.copy("COPY enterprise FROM STDIN (FORMAT csv, NULL '\\N')") as copy:
                    copy.write(buffer.getbuffer())
            log.info("source: %d / %d rows", start + frame.height, rows)
        # the incremental run reads `updated_at >= checkpoint`: an index keeps that a range scan
        conn.execute("CREATE INDEX enterprise_updated_at ON enterprise (updated_at)")
        conn.execute("VACUUM ANALYZE enterprise")
    return time.monotonic() - started
