"""Builds a Feast feature repository whose online store is the test's own
Redis, and materialises its features: run with the Feast venv's Python
(.switchyard/venvs/feast), never imported by pytest (Feast's dependencies
conflict with the test venv's).

    python feast_repo.py DIR REDIS_HOST:PORT

Entity `user` (join key `user_id`, INT64); feature view `user_stats` with
sixteen FLOAT32 features f00..f15 (the `mlp` example model's input width) and
`trips` INT64. User k (1..=50) has f_j = ((k * 31 + j * 7) % 97) / 97 - 0.5 and
trips = k * 3: the test computes the same values. Users 1000+ do not exist.
"""
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd

USERS = range(1, 51)
WIDTH = 16


def value(user, j):
    return ((user * 31 + j * 7) % 97) / 97 - 0.5


def main(repo, redis):
    repo = Path(repo)
    (repo / "data").mkdir(parents=True, exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        textwrap.dedent(
            f"""\
            project: switchyard_test
            registry: data/registry.db
            provider: local
            online_store:
              type: redis
              connection_string: "{redis}"
            offline_store:
              type: file
            entity_key_serialization_version: 3
            """
        )
    )
    (repo / "features.py").write_text(
        textwrap.dedent(
            f"""\
            from datetime import timedelta

            from feast import Entity, FeatureView, Field, FileSource
            from feast.types import Float32, Int64

            user = Entity(name="user", join_keys=["user_id"])
            source = FileSource(path="data/user_stats.parquet", timestamp_field="event_timestamp")
            user_stats = FeatureView(
                name="user_stats",
                entities=[user],
                ttl=timedelta(days=3650),
                schema=[Field(name=f"f{{j:02d}}", dtype=Float32) for j in range({WIDTH})]
                + [Field(name="trips", dtype=Int64)],
                source=source,
            )
            """
        )
    )
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = []
    for u in USERS:
        row = {"user_id": u, "event_timestamp": now - timedelta(hours=1), "trips": u * 3}
        row.update({f"f{j:02d}": value(u, j) for j in range(WIDTH)})
        rows.append(row)
    df = pd.DataFrame(rows)
    for j in range(WIDTH):
        df[f"f{j:02d}"] = df[f"f{j:02d}"].astype("float32")
    df.to_parquet(repo / "data" / "user_stats.parquet")

    from feast import FeatureStore

    store = FeatureStore(repo_path=str(repo))
    sys.path.insert(0, str(repo))
    import features  # the repo's definitions

    store.apply([features.user, features.user_stats])
    store.materialize(start_date=now - timedelta(days=1), end_date=now)
    print("materialised", len(rows))


if __name__ == "__main__":
    main(*sys.argv[1:])
