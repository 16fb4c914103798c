"""pretrain.launch: the rendezvous variables come from the launcher, else Slurm, else a 1-rank local group."""

import pytest

from pretrain.launch import DIST_VARS, resolve_dist_env


def test_launcher_variables_win_over_slurm():
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29511",
           "SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_JOB_NODELIST": "x[1-2]"}
    assert resolve_dist_env(env, hostnames=lambda s: pytest.fail("scontrol must not be called")) == {
        "RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "node7", "MASTER_PORT": "29511"}


def test_slurm_ranks_and_first_node_as_master():
    seen = []

    def hostnames(nodelist):
        seen.append(nodelist)
        return ["gpu-a01", "gpu-a02", "gpu-b07"]

    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "12", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "123456",
           "SLURM_JOB_NODELIST": "gpu-a[01-02],gpu-b07"}
    out = resolve_dist_env(env, hostnames=hostnames)
    assert seen == ["gpu-a[01-02],gpu-b07"]
    assert out == {"RANK": "5", "WORLD_SIZE": "12", "LOCAL_RANK": "1", "MASTER_ADDR": "gpu-a01",
                   "MASTER_PORT": str(20000 + 123456 % 20000)}


def test_slurm_keeps_an_exported_master():
    env = {"SLURM_PROCID": "0", "SLURM_NTASKS": "2", "SLURM_LOCALID": "0", "SLURM_JOB_ID": "7",
           "SLURM_JOB_NODELIST": "n[1-2]", "MASTER_ADDR": "10.1.2.3", "MASTER_PORT": "40000"}
    out = resolve_dist_env(env, hostnames=lambda s: pytest.fail("MASTER_ADDR was given"))
    assert (out["MASTER_ADDR"], out["MASTER_PORT"]) == ("10.1.2.3", "40000")


def test_no_launcher_gives_a_single_local_rank():
    out = resolve_dist_env({})
    assert set(out) == set(DIST_VARS)
    assert (out["RANK"], out["WORLD_SIZE"], out["LOCAL_RANK"], out["MASTER_ADDR"]) == ("0", "1", "0", "127.0.0.1")
    assert 0 < int(out["MASTER_PORT"]) < 65536


def test_multi_rank_without_rendezvous_is_an_error():
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        resolve_dist_env({"RANK": "0", "WORLD_SIZE": "2"})


def test_plain_slurm_hostname_needs_no_scontrol():
    from pretrain.launch import slurm_hostnames

    assert slurm_hostnames("node01") == ["node01"]
