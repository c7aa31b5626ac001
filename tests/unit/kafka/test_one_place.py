"""Every Kafka client of the package is built in pipeline/kafka/: no other module calls a client's
constructor (confluent-kafka's, aiokafka's, Faust's app, or a subclass of one), nor writes the
connection (the bootstrap servers, `settings.kafka.extra`) into a client's configuration.

Names are resolved through each module's imports, so `Consumer(...)` is a client only where
`Consumer` is confluent_kafka's, and `App(...)` only where it is Faust's."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pipeline

PACKAGE = Path(pipeline.__file__).parent
ROOT = PACKAGE.parent

# Each client library's client classes, by the module path's first part.
CONSTRUCTORS = {
    "confluent_kafka": {"Consumer", "Producer", "AdminClient", "DeserializingConsumer", "SerializingProducer"},
    "aiokafka": {"AIOKafkaConsumer", "AIOKafkaProducer", "AIOKafkaClient", "AIOKafkaAdminClient"},
    "faust": {"App"},
}
CLIENTS_HOME = "pipeline.kafka"  # the one package that builds clients
CONNECTION_HOMES = {"pipeline.kafka", "pipeline.settings"}  # and that writes the connection


@dataclass(frozen=True)
class Module:
    name: str  # pipeline.worker.loop
    path: str  # pipeline/worker/loop.py, as offences name it
    tree: ast.Module

    def within(self, package: str) -> bool:
        return self.name == package or self.name.startswith(package + ".")


def parse(name: str, path: str, source: str) -> Module:
    return Module(name, path, ast.parse(source, filename=path))


def package_modules() -> list[Module]:
    modules = []
    for file in sorted(PACKAGE.rglob("*.py")):
        parts = file.relative_to(ROOT).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules.append(parse(name, file.relative_to(ROOT).as_posix(), file.read_text()))
    return modules


def offences(modules: list[Module]) -> list[str]:
    """Each client built, or connection written, outside its home: "path:line: what"."""
    names = {m.name: _Names(m) for m in modules}
    client_classes = _client_subclasses(modules, names)
    found = []
    for module in modules:
        resolve = names[module.name].resolve
        for node in ast.walk(module.tree):
            if not module.within(CLIENTS_HOME) and isinstance(node, ast.Call):
                called = resolve(node.func)
                if called is not None and (_is_constructor(called) or called in client_classes):
                    found.append(f"{module.path}:{node.lineno}: {called}(...) outside pipeline/kafka/")
            if any(module.within(home) for home in CONNECTION_HOMES):
                continue
            if isinstance(node, ast.Constant) and node.value == "bootstrap.servers":
                found.append(f"{module.path}:{node.lineno}: 'bootstrap.servers' written outside pipeline/kafka/")
            if isinstance(node, ast.Call):
                found += [
                    f"{module.path}:{node.lineno}: bootstrap_servers= outside pipeline/kafka/"
                    for keyword in node.keywords
                    if keyword.arg == "bootstrap_servers"
                ]
            if (
                isinstance(node, ast.Attribute)
                and node.attr == "extra"
                and isinstance(node.value, ast.Attribute)
                and node.value.attr == "kafka"
            ):
                found.append(f"{module.path}:{node.lineno}: kafka.extra read outside pipeline/kafka/")
    return sorted(found, key=lambda offence: (offence.split(":")[0], int(offence.split(":")[1])))


class _Names:
    """What a module's names stand for: its imports (anywhere in it) and its own top-level classes."""

    def __init__(self, module: Module) -> None:
        self.bound: dict[str, str] = {}
        package = module.name.split(".")
        for node in ast.walk(module.tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.asname is not None:
                        self.bound[alias.asname] = alias.name
                    else:
                        first = alias.name.split(".")[0]
                        self.bound[first] = first
            elif isinstance(node, ast.ImportFrom):
                origin = node.module or ""
                if node.level:  # relative: from the module's package (an __init__'s name is its package)
                    base = package[: len(package) - node.level + (1 if module.path.endswith("__init__.py") else 0)]
                    origin = ".".join([*base, *([origin] if origin else [])])
                for alias in node.names:
                    self.bound[alias.asname or alias.name] = f"{origin}.{alias.name}"
        for node in module.tree.body:
            if isinstance(node, ast.ClassDef):
                self.bound.setdefault(node.name, f"{module.name}.{node.name}")

    def resolve(self, node: ast.expr) -> str | None:
        """The dotted name an expression stands for (`ck.Producer` → confluent_kafka.Producer), or None."""
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        return None


def _is_constructor(name: str) -> bool:
    parts = name.split(".")
    return parts[-1] in CONSTRUCTORS.get(parts[0], set())


def _client_subclasses(modules: list[Module], names: dict[str, _Names]) -> set[str]:
    """The package's classes that are (through any chain of subclasses) a client class."""
    bases = {
        f"{module.name}.{node.name}": [names[module.name].resolve(base) for base in node.bases]
        for module in modules
        for node in ast.walk(module.tree)
        if isinstance(node, ast.ClassDef)
    }
    found: set[str] = set()
    while grown := {
        name
        for name, of in bases.items()
        if name not in found and any(b is not None and (_is_constructor(b) or b in found) for b in of)
    }:
        found |= grown
    return found


# -- the package ---------------------------------------------------------------------------------------


def test_every_kafka_client_is_built_in_pipeline_kafka_and_nowhere_else():
    modules = package_modules()
    assert any(m.name == "pipeline.kafka.clients" for m in modules), "the package was found and read"
    found = offences(modules)
    assert not found, "build Kafka clients through pipeline.kafka.clients:\n" + "\n".join(found)


# -- the rule itself, on small examples ------------------------------------------------------------


def _offences(**sources: str) -> list[str]:
    """Offences in modules given as `dotted_name=source` (underscores for dots)."""
    modules = []
    for key, source in sources.items():
        name = key.replace("__", ".")
        modules.append(parse(name, name.replace(".", "/") + ".py", source))
    return offences(modules)


def test_a_client_constructor_is_found_however_it_was_imported():
    found = _offences(
        pipeline__a="from confluent_kafka import Consumer\nConsumer({})\n",
        pipeline__b="import confluent_kafka as ck\nck.Producer({})\n",
        pipeline__c="from confluent_kafka.admin import AdminClient as Admin\nAdmin({})\n",
        pipeline__d=(
            "import aiokafka\nfrom aiokafka import AIOKafkaConsumer\nAIOKafkaConsumer()\naiokafka.AIOKafkaProducer()\n"
        ),
        pipeline__e="import faust\napp = faust.App('x')\n",
        pipeline__f="def make():\n    from faust import App\n    return App('x')\n",
    )
    assert [line.split(": ")[0] for line in found] == [
        "pipeline/a.py:2",
        "pipeline/b.py:2",
        "pipeline/c.py:2",
        "pipeline/d.py:3",
        "pipeline/d.py:4",
        "pipeline/e.py:2",
        "pipeline/f.py:3",
    ]
    assert "confluent_kafka.admin.AdminClient(...)" in found[2]


def test_a_subclass_of_a_client_is_a_client_in_its_module_and_in_any_other():
    found = _offences(
        pipeline__a="import faust\nclass MyApp(faust.App): ...\nclass Mine(MyApp): ...\nMine('x')\n",
        pipeline__b="from pipeline.a import MyApp\nMyApp('y')\n",
    )
    assert [line.split(": ")[0] for line in found] == ["pipeline/a.py:4", "pipeline/b.py:2"]


def test_other_classes_of_the_same_names_are_not_clients():
    found = _offences(
        pipeline__a="import typer\napp = typer.Typer()\nclass App: ...\nApp()\n",
        pipeline__b="class Consumer: ...\nConsumer()\n",
        pipeline__c="from pipeline.a import App\nApp()\nimport faust\nfaust.Worker(app)\n",
        pipeline__d="from confluent_kafka import Consumer\ndef f(c: Consumer) -> Consumer: return c\n",
    )
    assert found == []


def test_the_connection_is_written_only_in_pipeline_kafka_and_the_settings():
    found = _offences(
        pipeline__a="config = {'bootstrap.servers': s.kafka.bootstrap_servers}\n",
        pipeline__b="client(bootstrap_servers=servers)\n",
        pipeline__c="config = {**settings.kafka.extra}\n",
        pipeline__kafka__clients=(
            "from confluent_kafka import Consumer\nConsumer({'bootstrap.servers': s, **k.extra}, bootstrap_servers=s)\n"
        ),
        pipeline__settings="x = {'bootstrap.servers': 1}\n",
    )
    assert [line.split(": ")[0] for line in found] == ["pipeline/a.py:1", "pipeline/b.py:1", "pipeline/c.py:1"]
