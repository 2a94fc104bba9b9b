"""RabbitMQ fixtures: the broker at 127.0.0.1:5672 (or ``PATRON_TEST_AMQP_URL``), unique names.

Every queue, exchange and virtual host a test uses gets a unique name from :class:`Broker` and
is deleted after the test; its fault injections (closing connections, a memory alarm, deleting
a virtual host) touch only what the test made, or are undone before it ends. When the broker is
unreachable the tests skip with the reason, unless the environment variable ``CI`` is set: then
they fail. Processors, Services and metrics come from :mod:`tests.support`.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import threading
import urllib.parse
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

import pika
import pytest
from pika import exceptions as pika_errors

from tests.conftest import wait_for

AMQP_URL = os.environ.get("PATRON_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
#: The broker's relative memory high watermark, restored after a memory-alarm test. A constant,
#: not read back from the broker: a concurrent run of the same test would read the alarm's 0.
MEMORY_WATERMARK = os.environ.get("PATRON_TEST_AMQP_WATERMARK", "0.4")
_MEMORY_ALARM_ON = (
    "lists:any(fun({{resource_limit, memory, _}, _}) -> true; (_) -> false end, "
    "rabbit_alarm:get_alarms())."
)


def _unreachable() -> str | None:
    params = pika.URLParameters(AMQP_URL)
    params.connection_attempts = 1
    params.socket_timeout = 2
    try:
        pika.BlockingConnection(params).close()
    except Exception as exc:
        return f"RabbitMQ at {AMQP_URL} is unreachable: {exc!r}"
    return None


@pytest.fixture(scope="session")
def amqp_url() -> str:
    reason = _unreachable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: broker-backed tests must run)")
        pytest.skip(reason)
    return AMQP_URL


class Broker:
    """The test's own view of RabbitMQ, over a connection of its own (test thread only).

    Names made by :meth:`name` start with this test's unique prefix and are deleted by
    :meth:`cleanup`; :meth:`app_name` gives connection names that
    :meth:`close_app_connections` can find.
    """

    def __init__(self, url: str) -> None:
        self.url = url
        self.prefix = f"patron-test-{uuid.uuid4().hex[:10]}"
        self._queues: list[str] = []
        self._exchanges: list[str] = []
        self._vhosts: list[str] = []
        params = pika.URLParameters(url)
        params.client_properties = {"connection_name": f"{self.prefix}-helper"}
        self._connection = pika.BlockingConnection(params)
        self._channel: Any = None

    # -- names -------------------------------------------------------------------------------

    def name(self, kind: str = "q") -> str:
        """A unique queue name, deleted after the test (the code under test may declare it)."""
        name = f"{self.prefix}-{kind}-{uuid.uuid4().hex[:6]}"
        self._queues.append(name)
        return name

    def app_name(self, role: str) -> str:
        """A connection name for the code under test (see :meth:`close_app_connections`)."""
        return f"{self.prefix}-app-{role}"

    # -- topology ----------------------------------------------------------------------------

    @property
    def channel(self) -> Any:
        if self._channel is None or not self._channel.is_open:
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()
        return self._channel

    def queue(self, *, arguments: dict[str, Any] | None = None, durable: bool = True) -> str:
        name = self.name()
        self.channel.queue_declare(name, durable=durable, arguments=arguments)
        return name

    def exchange(self, exchange_type: str = "fanout") -> str:
        name = f"{self.prefix}-x-{uuid.uuid4().hex[:6]}"
        self._exchanges.append(name)
        self.channel.exchange_declare(name, exchange_type=exchange_type, durable=False)
        return name

    def exchange_name(self) -> str:
        """A unique exchange name, deleted after the test, for code that declares it."""
        name = f"{self.prefix}-x-{uuid.uuid4().hex[:6]}"
        self._exchanges.append(name)
        return name

    def dead_lettered_queue(self) -> tuple[str, str]:
        """``(source, dead_letter_queue)``: messages rejected without requeue from ``source``
        land in ``dead_letter_queue`` (through a fanout dead-letter exchange)."""
        dlx = self.exchange("fanout")
        dlq = self.queue()
        self.channel.queue_bind(dlq, dlx)
        source = self.queue(arguments={"x-dead-letter-exchange": dlx})
        return source, dlq

    # -- messages ----------------------------------------------------------------------------

    def publish(
        self,
        queue: str,
        bodies: Iterable[bytes],
        *,
        headers: dict[str, Any] | None = None,
        properties: pika.BasicProperties | None = None,
    ) -> None:
        """Publish to ``queue`` through the default exchange, waiting for confirms."""
        props = properties or pika.BasicProperties(headers=headers, delivery_mode=2)
        channel = self.channel
        for body in bodies:
            channel.basic_publish("", queue, body, props, mandatory=True)

    def ready(self, queue: str) -> int:
        """Messages ready in ``queue`` (not delivered to a consumer)."""
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def consumers(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.consumer_count)

    def exists(self, queue: str) -> bool:
        try:
            self.channel.queue_declare(queue, passive=True)
        except pika_errors.ChannelClosedByBroker:
            return False
        return True

    def drain(self, queue: str) -> list[tuple[Any, Any, bytes]]:
        """Take every message ready in ``queue`` (acknowledged), in order."""
        taken: list[tuple[Any, Any, bytes]] = []
        while True:
            method, properties, body = self.channel.basic_get(queue, auto_ack=True)
            if method is None:
                return taken
            taken.append((method, properties, body))

    def unacked(self, queue: str) -> int:
        """Messages of ``queue`` delivered and not acknowledged yet, as the broker counts them
        (``rabbitmqctl list_queues``: about a second per call)."""
        listing = _rabbitmqctl("list_queues", "-q", "--no-table-headers", "name",
                               "messages_unacknowledged")
        for line in listing.splitlines():
            name, _, count = line.rpartition("\t")
            if name == queue:
                return int(count)
        raise AssertionError(f"queue {queue} is not listed by rabbitmqctl")

    # -- faults ------------------------------------------------------------------------------

    def close_app_connections(self) -> int:
        """Have the broker close every connection named by :meth:`app_name` (all the
        connections of the code under test) with ``rabbitmqctl close_connection``; the number
        closed. Other tests' and other users' connections are left alone."""
        listing = _rabbitmqctl("list_connections", "-q", "--no-table-headers", "pid",
                               "client_properties")
        marker = re.compile(r'\{"connection_name","' + re.escape(self.prefix) + r"-app-")
        pids = [line.split("\t", 1)[0] for line in listing.splitlines() if marker.search(line)]
        closers = [
            subprocess.Popen(["rabbitmqctl", "close_connection", pid, "patron test fault"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            for pid in pids
        ]
        for closer in closers:
            _, err = closer.communicate(timeout=60)
            assert closer.returncode == 0, err
        return len(pids)

    @contextlib.contextmanager
    def memory_alarm(self) -> Iterator[None]:
        """Raise a memory alarm for the block (``set_vm_memory_high_watermark 0``): the broker
        blocks every connection that publishes. Whatever happens, the watermark is set back to
        :data:`MEMORY_WATERMARK` and the block ends only once the alarm cleared. Other tests'
        publishers stall meanwhile: keep the block short."""
        try:
            _rabbitmqctl("set_vm_memory_high_watermark", "0")
            wait_for(lambda: _rabbitmqctl("-q", "eval", _MEMORY_ALARM_ON).strip() == "true",
                     timeout=30, interval=0.1)
            yield
        finally:
            _rabbitmqctl("set_vm_memory_high_watermark", MEMORY_WATERMARK)
            wait_for(lambda: _rabbitmqctl("-q", "eval", _MEMORY_ALARM_ON).strip() == "false",
                     timeout=30, interval=0.1)

    def vhost(self, permitted: bool = True) -> str:
        """A new virtual host that guest may use (unless not ``permitted``), deleted after the
        test; see :meth:`url_of`."""
        name = f"{self.prefix}-vhost-{uuid.uuid4().hex[:6]}"
        self._vhosts.append(name)
        _rabbitmqctl("add_vhost", name)
        if permitted:
            _rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        return name

    def delete_vhost(self, name: str) -> None:
        """Delete virtual host ``name``: the broker closes its connections and refuses new
        ones."""
        _rabbitmqctl("delete_vhost", name)

    def url_of(self, vhost: str) -> str:
        """The broker's URL with virtual host ``vhost``."""
        parts = urllib.parse.urlsplit(self.url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + urllib.parse.quote(vhost, "")))

    # -- cleanup -----------------------------------------------------------------------------

    def cleanup(self) -> None:
        for queue in self._queues:
            with contextlib.suppress(pika_errors.AMQPError):
                self.channel.queue_delete(queue)
        for exchange in self._exchanges:
            with contextlib.suppress(pika_errors.AMQPError):
                self.channel.exchange_delete(exchange)
        with contextlib.suppress(pika_errors.AMQPError):
            self._connection.close()
        for vhost in self._vhosts:  # maybe deleted by the test already
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True,
                           timeout=60, check=False)


def _rabbitmqctl(*args: str) -> str:
    """Run ``rabbitmqctl`` on the broker's host; without it the test skips (fails under CI)."""
    if shutil.which("rabbitmqctl") is None:
        reason = "rabbitmqctl is needed to inspect the broker or inject faults"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set: broker-backed tests must run)")
        pytest.skip(reason)
    return subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, check=True,
                          timeout=60).stdout


@pytest.fixture
def broker(amqp_url: str) -> Iterator[Broker]:
    helper = Broker(amqp_url)
    try:
        yield helper
    finally:
        helper.cleanup()


class Watched:
    """A component wrapper that exposes the stop event the Service handed to ``inner``, so a
    test can wait until the component was really told to stop."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name = inner.name
        self.stop_event: threading.Event | None = None
        self._started = threading.Event()

    def run(self, stop: threading.Event) -> None:
        self.stop_event = stop
        self._started.set()
        self.inner.run(stop)

    def ready(self) -> bool:
        return bool(self.inner.ready())

    def stopping(self) -> bool:
        return self.stop_event is not None and self.stop_event.is_set()
