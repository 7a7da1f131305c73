"""The Ray engine on a simulated three-node cluster (``ray.cluster_utils.Cluster``, every
node on 127.0.0.1 with its own CPUs and a resource naming it): the work is spread over
the nodes (decode tasks, encoder actors and part writers on more than one), the dataset
equals the local engine's, and a driver killed mid-run resumes with every image once.

The drivers run in child processes, as on a real cluster: they join it by address. All
nodes share this machine's file system, which stands in for a shared one. The cluster
lives in a private Ray temp folder, so no other ``ray.init()`` on the machine joins it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from same_dataset import assert_same_dataset

from embedkit import open_latents

N = 160
NODES = 3
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:ray")

#: a driver: joins the cluster, embeds with a backbone that marks which nodes held a model
#: actor, decoded and encoded (a file per stage and node), prints the result; with a kill
#: point it SIGKILLs itself right after the writer committed its Nth part
DRIVER = r"""
import json, os, signal, sys
import ray
from embedkit_pixels import PixelsBackbone
from embedkit.pipeline.ray_engine import embed_with_ray
from embedkit.store.writer import LatentWriter

class Marking(PixelsBackbone):
    def __init__(self, marks):
        super().__init__(device="cpu")
        self.marks, self.driver = marks, os.getpid()

    def mark(self, stage):
        if os.getpid() != self.driver:  # the driver preprocesses a probe image itself
            node = ray.get_runtime_context().get_node_id()
            open(os.path.join(self.marks, f"{stage}-{node}"), "a").close()

    def to(self, device):  # in each model actor's constructor
        self.mark("actor")
        return super().to(device)

    def preprocess(self, image):
        self.mark("decode")
        return super().preprocess(image)

    def forward(self, batch):
        self.mark("encode")
        return super().forward(batch)

address, source, out, marks, kill_after = sys.argv[1:6]
if int(kill_after):
    commit, done = LatentWriter.commit, []
    def commit_then_die(self, staged):
        path = commit(self, staged)
        done.append(path)
        if len(done) == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)
        return path
    LatentWriter.commit = commit_then_die
os.makedirs(marks, exist_ok=True)
ray.init(address=address, log_to_driver=False, configure_logging=False)
result = embed_with_ray(source, Marking(marks), out, actors=2, batch_size=16,
                        rows_per_part=40, progress=False)
print(json.dumps({"embedded": result.embedded, "skipped": result.skipped,
                  "rows_by_node": result.rows_by_node}))
"""


@pytest.fixture(scope="module")
def cluster() -> Iterator[tuple[str, list[str]]]:
    """Three nodes (2 CPUs, 100 MiB of object store each) on 127.0.0.1: the address and
    the node ids. Shut down, and its temp folder removed, after the module."""
    pytest.importorskip("ray.data", reason="Ray is not installed: pip install 'embedkit[ray]'")
    from ray.cluster_utils import Cluster

    temp = tempfile.mkdtemp(prefix="ekray", dir="/tmp")  # short: Ray's socket paths
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAY_TMPDIR", temp)  # Ray's address file too: nobody else joins
        node = {"num_cpus": 2, "object_store_memory": 100 << 20, "node_ip_address": "127.0.0.1"}
        simulated = Cluster(initialize_head=True, head_node_args=node)
        try:
            ids = [simulated.head_node.node_id]
            for n in range(2, NODES + 1):
                ids.append(simulated.add_node(**node, resources={f"node{n}": 1}).node_id)
            simulated.wait_for_nodes()
            yield simulated.address, ids
        finally:
            simulated.shutdown()
            shutil.rmtree(temp, ignore_errors=True)


def drive(cluster, source: Path, out: Path, marks: Path, kill_after: int = 0) -> dict:
    """Run :data:`DRIVER` against the cluster; its printed result (None when killed)."""
    address, _ = cluster
    # the child resolves 127.0.0.1 as itself, not as this machine's network address
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    argv = [sys.executable, "-c", DRIVER, address, str(source), str(out), str(marks)]
    done = subprocess.run(
        [*argv, str(kill_after)], capture_output=True, text=True, env=env, timeout=300
    )
    if kill_after:
        assert done.returncode == -signal.SIGKILL, done.stderr[-3000:]
        return {}
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def nodes_that(marks: Path, stage: str) -> set[str]:
    return {p.name.split("-", 1)[1] for p in marks.glob(f"{stage}-*")}


def test_work_is_spread_over_the_nodes(cluster, shapes: Path, local_out: Path, tmp_path: Path):
    out, marks = tmp_path / "lat", tmp_path / "marks"
    result = drive(cluster, shapes, out, marks)

    _, nodes = cluster
    assert result["embedded"] == N
    assert len(nodes_that(marks, "decode")) >= 2  # decode tasks ran on several nodes
    assert len(nodes_that(marks, "actor")) == 2  # the two model actors on two nodes
    # (one actor may encode every batch while the other still starts: 10 batches only)
    assert nodes_that(marks, "encode") <= nodes_that(marks, "actor")
    assert nodes_that(marks, "decode") | nodes_that(marks, "actor") <= set(nodes)
    written = result["rows_by_node"]
    assert set(written) == set(nodes)  # a part writer on every node wrote parts
    assert sum(written.values()) == N and all(rows > 0 for rows in written.values())
    assert len(open_latents(out).files) >= NODES  # parts of <= 40 rows, from every node
    assert not list(out.glob(".*.tmp"))
    assert_same_dataset(out, local_out, N)


@pytest.mark.slow  # two drivers on the cluster: ~1-2 min; staging is tested in tests/store
def test_killed_driver_resumes(cluster, shapes: Path, local_out: Path, tmp_path: Path):
    """SIGKILL right after the first commit: the parts staged elsewhere stay invisible;
    the re-run deletes them and embeds exactly the rows not committed."""
    out = tmp_path / "lat"
    drive(cluster, shapes, out, tmp_path / "marks", kill_after=1)
    partial = open_latents(out)
    committed = len(partial)
    assert 0 < committed < N and len(set(partial.ids())) == committed

    result = drive(cluster, shapes, out, tmp_path / "marks")
    assert (result["skipped"], result["embedded"]) == (committed, N - committed)
    assert_same_dataset(out, local_out, N)


def test_sharded_index_build_spreads_over_the_nodes(cluster, tmp_path: Path):
    """`embedkit index --engine ray` run by a driver that joins the cluster: the shards
    ran on more than one node, and the index is the one a single machine builds."""
    import numpy as np

    from embedkit.index import build_index, load_index
    from embedkit.plugins.info import BackboneInfo
    from embedkit.store.writer import write_latents

    rng = np.random.default_rng(0)
    centers = rng.standard_normal((30, 16))
    x = centers[rng.integers(0, 30, 24_000)] + 0.4 * rng.standard_normal((24_000, 16))
    lat = tmp_path / "lat"
    for p in range(4):
        ids = [f"p{p}-{i}" for i in range(6_000)]
        write_latents(lat, ids, x[p * 6_000 : (p + 1) * 6_000].astype("f4"),
                      BackboneInfo("test-encoder", 16))  # fmt: skip
    address, nodes = cluster
    argv = [sys.executable, "-m", "embedkit", "index", str(lat), "--kind", "ivf",
            "--engine", "ray", "--shards", "6", "--address", address]  # fmt: skip
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # as drive() does
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "rows added in 6 shards on" in done.stdout

    sharded = load_index(lat)
    record = sharded.info.sharding
    ran_on = {shard["node"] for shard in record["per_shard"]}
    assert len(ran_on) >= 2 and ran_on <= set(nodes) and record["nodes"] == len(ran_on)
    local = build_index(lat, kind="ivf", save=False, progress=False)
    assert np.array_equal(sharded.ids, local.ids)
    assert sharded.info.recall == local.info.recall
    queries = x[:50].astype("f4") + 0.01
    assert np.array_equal(sharded.search(queries, 10)[1], local.search(queries, 10)[1])


#: a driver that hands the S3 settings to every worker of its job (on a real cluster the
#: nodes have their own credentials), embeds to S3 and builds the index there, sharded
S3_DRIVER = r"""
import json, os, sys
import ray
import embedkit
from embedkit.index import build_index

address, source, uri = sys.argv[1:4]
names = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
         "AWS_DEFAULT_REGION", "AWS_EC2_METADATA_DISABLED")
ray.init(address=address, log_to_driver=False, configure_logging=False,
         runtime_env={"env_vars": {name: os.environ[name] for name in names}})
result = embedkit.embed(source, "pixels", uri, engine="ray", batch_size=16,
                        rows_per_part=40, progress=False)
index = build_index(uri, kind="flat", engine="ray", shards=4, progress=False)
print(json.dumps({"embedded": result.embedded, "rows_by_node": result.rows_by_node,
                  "sharding": index.info.sharding}))
"""


@pytest.mark.slow  # two Ray jobs on three nodes with a runtime env: ~1-2 min
def test_object_storage_on_the_cluster(cluster, shapes: Path, local_out: Path, s3_bucket: str):
    """Part writers on several nodes stage their parts on S3 and the driver commits them;
    the sharded index build reads them from S3 on several nodes. The dataset equals the
    local engine's."""
    address, nodes = cluster
    uri = f"{s3_bucket}/lat"
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "EMBEDKIT_RAY_ACTORS": "2"}
    argv = [sys.executable, "-c", S3_DRIVER, address, str(shapes), uri]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["embedded"] == N
    assert len(result["rows_by_node"]) >= 2 and set(result["rows_by_node"]) <= set(nodes)
    ran_on = {shard["node"] for shard in result["sharding"]["per_shard"]}
    assert len(ran_on) >= 2
    assert_same_dataset(uri, local_out, N)
