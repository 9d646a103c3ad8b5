"""Test hosts on one machine: each part of the cluster gets an address of its own.

Where network namespaces can be made (root, `ip` available), every host is a namespace with its
own interface on a private bridge, so its services listen on their usual ports at their own
address, as on separate machines; this process reaches them through the bridge's address, which
is also where they reach it (the webhook receiver). Elsewhere every host is a loopback address of
its own (127.0.0.x) and ports are picked free.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from services.common.ports import free_port

# Names of what this module creates carry this prefix and the creating process's pid, so that
# leftovers of a run that was killed can be told apart from a live run's and removed.
_PREFIX = "kso"


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    # What a command is run under to be on this host ("ip netns exec NAME"), or nothing.
    command_prefix: tuple[str, ...] = ()
    # Whether the host has its address to itself (any port is free there).
    isolated: bool = False

    def argv(self, command: Sequence[str]) -> list[str]:
        return [*self.command_prefix, *command]

    def port(self, usual: int) -> int:
        """The port a server listens on here: its usual one on a host of its own, else a free one."""
        return usual if self.isolated else free_port()

    def at(self, port: int) -> str:
        return f"{self.address}:{port}"


@dataclass
class Network:
    hosts: dict[str, Host]
    # The address this process has on the hosts' network (where they reach it).
    own_address: str
    kind: str
    _namespaces: list[str] = field(default_factory=list)
    _bridge: str = ""

    def close(self) -> None:
        for namespace in self._namespaces:
            _delete_namespace(namespace)
        if self._bridge:
            subprocess.run(["ip", "link", "delete", self._bridge], capture_output=True, check=False)


def namespaces_possible() -> bool:
    if os.geteuid() != 0 or shutil.which("ip") is None:
        return False
    probe = f"{_PREFIX}{os.getpid()}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, check=False).returncode == 0
    if made:
        subprocess.run(["ip", "netns", "delete", probe], capture_output=True, check=False)
    return made


def _delete_namespace(name: str) -> None:
    """Whatever still runs on the host is killed first: a process outlives its namespace's name."""
    pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False).stdout.split()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGKILL)
    subprocess.run(["ip", "netns", "delete", name], capture_output=True, check=False)


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


def remove_leftovers() -> None:
    """Namespaces and bridges of earlier runs whose process no longer exists."""
    listing = subprocess.run(["ip", "-o", "netns", "list"], capture_output=True, text=True, check=False).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, check=False).stdout
    names = [line.split()[0] for line in listing.splitlines() if line.startswith(_PREFIX)]
    names += [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()
              if line.split(":")[1].strip().startswith(_PREFIX)]
    for name in names:
        owner = name.removeprefix(_PREFIX).split("h")[0].split("b")[0].split("v")[0]
        if owner.isdigit() and not _alive(int(owner)):
            if "h" in name.removeprefix(_PREFIX):
                _delete_namespace(name)
            else:
                subprocess.run(["ip", "link", "delete", name], capture_output=True, check=False)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _free_subnet() -> ipaddress.IPv4Network:
    used = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True, check=False).stdout
    for third in range(200, 250):
        subnet = ipaddress.IPv4Network(f"10.213.{third}.0/24")
        if f" 10.213.{third}." not in used:
            return subnet
    raise RuntimeError("no free 10.213.x.0/24 subnet for the test hosts")


def _namespaced(names: Sequence[str]) -> Network:
    remove_leftovers()
    pid = os.getpid()
    subnet = _free_subnet()
    addresses = list(subnet.hosts())
    bridge = f"{_PREFIX}{pid}b"
    network = Network({}, str(addresses[0]), "network namespaces", _bridge=bridge)
    try:
        _ip("link", "add", bridge, "type", "bridge")
        _ip("addr", "add", f"{addresses[0]}/{subnet.prefixlen}", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for index, name in enumerate(names, start=1):
            namespace, veth, address = f"{_PREFIX}{pid}h{index}", f"{_PREFIX}{pid}v{index}", str(addresses[index + 9])
            _ip("netns", "add", namespace)
            network._namespaces.append(namespace)
            _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", namespace)
            _ip("link", "set", veth, "master", bridge)
            _ip("link", "set", veth, "up")
            _ip("-n", namespace, "addr", "add", f"{address}/{subnet.prefixlen}", "dev", "eth0")
            _ip("-n", namespace, "link", "set", "eth0", "up")
            _ip("-n", namespace, "link", "set", "lo", "up")
            network.hosts[name] = Host(name, address, ("ip", "netns", "exec", namespace), isolated=True)
    except BaseException:
        network.close()
        raise
    return network


def _loopback(names: Sequence[str]) -> Network:
    hosts = {name: Host(name, f"127.0.0.{index + 10}") for index, name in enumerate(names, start=1)}
    return Network(hosts, "127.0.0.1", "loopback addresses")


@contextlib.contextmanager
def cluster_hosts(names: Sequence[str], namespaces: bool | None = None) -> Iterator[Network]:
    """One host per name. `namespaces`: True requires network namespaces, False refuses them, None
    uses them where they can be made."""
    use = namespaces_possible() if namespaces is None else namespaces
    network = _namespaced(names) if use else _loopback(names)
    try:
        yield network
    finally:
        network.close()
