"""Two hosts on one machine: two network namespaces joined by a veth pair, each with its own address and host name
(a UTS namespace), so every byte between the ranks crosses the veth as it would cross a network. comm.h's TCP
backend across them (rank 0 in host A, MASTER_ADDR = A's address), and mpirun across them restricted to TCP,
launching the remote rank through a plm_rsh_agent that enters the namespace instead of ssh-ing.

Needs root and iproute2 (skipped with the reason otherwise). Only the addresses of the namespaces made here are
used; the finaliser deletes them (and with them the veth pair)."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import subprocess

import pytest

from dist_helpers import (
    MPI_MISSING,
    check_outputs,
    clean_env,
    have_mpi,
    make_inputs,
    programs,
    ranks,  # noqa: F401
    read_info,
)

N_ELEMS = 1001
SUBNET = "10.231.0"  # private addresses inside the two namespaces only
# What rank 1 of 2 must receive from rank 0 in comm_driver's `collectives`, per type: all-reduce n/2 + n/2 elements
# (x2: out of and in place), reduce-scatter n/2 and all-gather n/2 (x2 each), for sum and avg: 8n elements; the
# broadcast comes from rank 1 itself. Over f32, f64 and bf16 (4 + 8 + 2 bytes). The veth also carries headers.
MIN_BYTES_TO_B = 8 * N_ELEMS * (4 + 8 + 2)


@dataclasses.dataclass
class Host:
    netns: str  # `ip netns` name
    veth: str  # its end of the veth pair
    addr: str  # its address
    hostname: str

    def exec_prefix(self) -> list[str]:
        """Run a command 'on this host': in its network namespace, under its own host name."""
        return [
            "ip",
            "netns",
            "exec",
            self.netns,
            "unshare",
            "--uts",
            "sh",
            "-c",
            f'hostname {self.hostname} && exec "$@"',
            "sh",
        ]

    def rx_bytes(self) -> int:
        out = subprocess.run(
            ["ip", "netns", "exec", self.netns, "cat", f"/sys/class/net/{self.veth}/statistics/rx_bytes"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return int(out)

    def netns_id(self) -> str:
        return subprocess.run(
            ["ip", "netns", "exec", self.netns, "readlink", "/proc/self/ns/net"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()


def _ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def two_hosts():
    if os.geteuid() != 0:
        pytest.skip("making network namespaces needs root")
    if shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("iproute2 (ip) or util-linux (unshare) not installed")
    tag = f"{os.getpid() % 100000}"
    hosts = [
        Host(f"llmgen-{tag}-a", f"lg{tag}a", f"{SUBNET}.1", "llmgen-host-a"),
        Host(f"llmgen-{tag}-b", f"lg{tag}b", f"{SUBNET}.2", "llmgen-host-b"),
    ]
    made: list[str] = []

    def cleanup():
        for name in made:
            for pid in _ip("netns", "pids", name).stdout.split():  # only processes of our own namespaces
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "del", name)

    try:
        for h in hosts:
            r = _ip("netns", "add", h.netns)
            if r.returncode != 0:
                pytest.skip(f"cannot make a network namespace here: {r.stderr.strip()}")
            made.append(h.netns)
        a, b = hosts
        steps = [
            ("link", "add", a.veth, "type", "veth", "peer", "name", b.veth),
            ("link", "set", a.veth, "netns", a.netns),
            ("link", "set", b.veth, "netns", b.netns),
        ]
        for h in hosts:
            steps += [
                ("-n", h.netns, "addr", "add", f"{h.addr}/24", "dev", h.veth),
                ("-n", h.netns, "link", "set", h.veth, "up"),
                ("-n", h.netns, "link", "set", "lo", "up"),
            ]
        for s in steps:
            r = _ip(*s)
            if r.returncode != 0:
                pytest.skip(f"cannot set up the veth pair (ip {' '.join(s)}): {r.stderr.strip()}")
        yield hosts
    finally:
        cleanup()


def _check_two_hosts(data: pathlib.Path, hosts: list[Host], how: str) -> None:
    for r, h in enumerate(hosts):
        info = read_info(data, r)
        assert info["netns"] == h.netns_id(), f"rank {r} did not run in {h.netns}"
        assert info["host"] == h.hostname
        assert info["how"] == how
        # one rank per host: each is local rank 0 of 1 (told by no launcher variable: found from the host names)
        assert (info["local_rank"], info["local_world_size"]) == ("0", "1")


def test_tcp_across_two_hosts(two_hosts, programs, tmp_path, ranks):
    a, b = two_hosts
    data = tmp_path / "data"
    ins = make_inputs(data, 2, N_ELEMS, seed=40)
    rx_before = b.rx_bytes()
    rk = ranks()
    for r, h in enumerate(two_hosts):
        rk.start(
            [programs.get("c"), "collectives", data, N_ELEMS],
            {"RANK": r, "WORLD_SIZE": 2, "MASTER_ADDR": a.addr, "MASTER_PORT": 29500},
            prefix=h.exec_prefix(),
        )
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(data, ins, 2, N_ELEMS)
    _check_two_hosts(data, two_hosts, f"tcp via {a.addr}:29500")
    crossed = b.rx_bytes() - rx_before
    print(f"host b received {crossed} bytes over its veth")
    assert crossed >= MIN_BYTES_TO_B  # the collectives' data went over the "network"


def test_file_rendezvous_across_two_hosts(two_hosts, programs, tmp_path, ranks):
    """The shared folder (here simply the same disk) carries rank 0's published addresses to the other host."""
    data = tmp_path / "data"
    rv = tmp_path / "rendezvous"
    rv.mkdir()
    ins = make_inputs(data, 2, N_ELEMS, seed=41)
    rk = ranks()
    for r, h in enumerate(two_hosts):
        rk.start(
            [programs.get("c"), "collectives", data, N_ELEMS],
            {"RANK": r, "WORLD_SIZE": 2, "LLMGEN_RENDEZVOUS_DIR": rv, "LLMGEN_RUN_ID": "job-7"},
            prefix=h.exec_prefix(),
        )
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(data, ins, 2, N_ELEMS)
    _check_two_hosts(data, two_hosts, f"tcp, rendezvous file {rv}/llmgen-rendezvous-job-7")


@pytest.mark.skipif(not have_mpi(), reason=MPI_MISSING)
def test_mpirun_across_two_hosts_tcp_only(two_hosts, programs, tmp_path):
    """mpirun in host A starts rank 1 in host B through an rsh agent; MPI may use TCP on the veth subnet only."""
    a, b = two_hosts
    data = tmp_path / "data"
    ins = make_inputs(data, 2, N_ELEMS, seed=42)
    agent = tmp_path / "agent.sh"
    cases = "\n".join(f"  {h.addr}) ns={h.netns}; name={h.hostname} ;;" for h in two_hosts)
    agent.write_text(f"""#!/bin/sh
# plm_rsh_agent: "ssh HOST COMMAND..." into the network namespace that holds HOST's address
host=$1; shift
case $host in
{cases}
  *) echo "agent: unknown host $host" >&2; exit 1 ;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $name && $*"
""")
    agent.chmod(0o755)
    hostfile = tmp_path / "hosts"
    hostfile.write_text("".join(f"{h.addr} slots=1\n" for h in two_hosts))
    rx_before = b.rx_bytes()
    cmd = [
        *a.exec_prefix(),
        "mpirun",
        "--allow-run-as-root",
        "-np",
        "2",
        "--hostfile",
        str(hostfile),
        "--mca",
        "plm_rsh_agent",
        str(agent),
        "--mca",
        "btl",
        "tcp,self",
        "--mca",
        "btl_tcp_if_include",
        f"{SUBNET}.0/24",
        "--mca",
        "oob_tcp_if_include",
        f"{SUBNET}.0/24",
        str(programs.get("mpi")),
        "collectives",
        str(data),
        str(N_ELEMS),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, env=clean_env(), timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    check_outputs(data, ins, 2, N_ELEMS)
    _check_two_hosts(data, two_hosts, "mpi")
    crossed = b.rx_bytes() - rx_before
    print(f"host b received {crossed} bytes over its veth")
    assert crossed >= MIN_BYTES_TO_B
