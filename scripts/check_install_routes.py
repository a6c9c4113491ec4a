"""Check every install route the README names, the way a user takes it, on fresh ComfyUI copies in a scratch folder.

    python -m scripts.check_install_routes                 # all routes (~5 min on 2 CPU cores, PyPI reachable)
    python -m scripts.check_install_routes --routes clone-0.33.0,comfy-cli --keep

Routes:
- clone-0.3.75, clone-0.33.0: `git clone <this repository> ComfyUI/custom_nodes/comfyui-cad`, `python -m pip install
  -r comfyui-cad/requirements.txt`, then `python main.py --cpu` on a fresh copy of that ComfyUI (0.3.75: a copy of
  .comfyui/ComfyUI; 0.33.0: unpacked from its tarball).
- manager: ComfyUI-Manager's command line (`cm-cli`, the pip package `comfyui_manager` at the version ComfyUI 0.33.0's
  manager_requirements.txt pins) installs the pack from a git URL into a fresh ComfyUI 0.33.0; the repository is
  served over plain HTTP from 127.0.0.1 (git's "dumb" protocol), as a public git host would serve it. Also records
  that a file:// URL is not taken as a URL. Then `python main.py --cpu --enable-manager`.
- comfy-cli: `comfy node validate` (the Comfy Registry's publishing checks) and `comfy node pack` on a clean clone.

Each server check: /object_info lists every node of the pack (one help page per node in web/docs/, which
tests/test_help_pages.py ties to the entrypoint's node list) under python_module custom_nodes.comfyui-cad, the
log has no import failure, and GET /extensions/comfyui-cad/docs/CADAttribute.md serves the help page.

The ComfyUI legs reuse the project's own virtual environments for torch and ComfyUI's requirements without
changing them: each route gets a new venv under the scratch folder whose site-packages has a .pth line pointing
at the leg's site-packages, so whatever a route installs lands in the scratch venv. Only committed work is
checked (the routes clone HEAD). Exit status 0 when every route passed; a summary is printed either way.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from scripts.comfy_client import ComfyClient, ComfyClientError
from scripts.comfy_server import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = "comfyui-cad"
ROUTES = ("clone-0.3.75", "clone-0.33.0", "manager", "comfy-cli")
DOCS = os.path.join(REPO, "web", "docs")


def env_path(name, default):
    return os.path.abspath(os.environ.get(name) or default)


PY_075 = env_path("CAD_PY_075", os.path.join(REPO, ".venv", "bin", "python"))
COMFYUI_075 = env_path("CAD_COMFYUI_075", os.path.join(REPO, ".comfyui", "ComfyUI"))
PY_033 = env_path("CAD_PY_033", os.path.join(REPO, ".venv-comfyui-0.33", "bin", "python"))
TARBALL_033 = env_path("CAD_COMFYUI_033_TARBALL",
                       os.path.join(REPO, "..", "shared", "comfyui", "ComfyUI-0.33.0.tar.gz"))


class RouteFailed(Exception):
    pass


def log(msg):
    print(msg, flush=True)


def run(cmd, cwd=None, env=None, timeout=900, check=True, record=None):
    """Run a command, print it and its output's tail; return CompletedProcess (stdout and stderr merged)."""
    shown = " ".join(cmd)
    log(f"$ {shown}" + (f"    (in {cwd})" if cwd else ""))
    done = subprocess.run(cmd, cwd=cwd, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
    out = "\n".join(line for line in done.stdout.splitlines() if not line.startswith("WARNING: Location"))
    if record is not None:
        record.append({"command": shown, "rc": done.returncode, "output": out[-4000:]})
    tail = "\n".join(out.splitlines()[-12:])
    if tail:
        log("  " + tail.replace("\n", "\n  "))
    if check and done.returncode != 0:
        raise RouteFailed(f"`{shown}` exited with {done.returncode}")
    done.stdout = out
    return done


def head_commit():
    return subprocess.check_output(["git", "-C", REPO, "rev-parse", "HEAD"], text=True).strip()


def expected_nodes():
    return sorted(f[:-3] for f in os.listdir(DOCS) if f.endswith(".md"))


def overlay_venv(leg_python, where):
    """A new venv at `where` that sees the leg venv's packages (a .pth line) but installs into itself."""
    if not os.path.exists(leg_python):
        raise RouteFailed(f"{leg_python} not found: run `make setup` / `make setup-0.33` first, or set CAD_PY_075 / "
                          f"CAD_PY_033")
    purelib = subprocess.check_output([leg_python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                      text=True).strip()
    run([leg_python, "-m", "venv", where])
    python = os.path.join(where, "bin", "python")
    own = subprocess.check_output([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  text=True).strip()
    with open(os.path.join(own, "zz_leg_site_packages.pth"), "w") as f:
        f.write(purelib + "\n")
    return python


def fresh_comfyui(leg, where):
    """A fresh ComfyUI tree for the leg at where/ComfyUI (no custom nodes but core's examples)."""
    target = os.path.join(where, "ComfyUI")
    if leg == "0.3.75":
        if not os.path.isfile(os.path.join(COMFYUI_075, "main.py")):
            raise RouteFailed(f"ComfyUI 0.3.75 not found at {COMFYUI_075}: run `make setup` or set CAD_COMFYUI_075")
        shutil.copytree(COMFYUI_075, target, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "user", "output", "temp"))
        for entry in os.listdir(os.path.join(target, "custom_nodes")):
            path = os.path.join(target, "custom_nodes", entry)
            if os.path.isdir(path) or os.path.islink(path):
                raise RouteFailed(f"{COMFYUI_075}/custom_nodes/ already holds {entry}: not a fresh ComfyUI")
    else:
        if not os.path.isfile(TARBALL_033):
            raise RouteFailed(f"{TARBALL_033} not found: set CAD_COMFYUI_033_TARBALL")
        with tarfile.open(TARBALL_033) as tar:
            tar.extractall(where, filter="data")
        os.rename(os.path.join(where, "ComfyUI-0.33.0"), target)
    return target


def check_server(python, comfyui, extra_args=(), record=None, startup_timeout=300):
    """Start `python main.py --cpu` in `comfyui` and check what a user would see: the nodes, no import error, the
    help pages."""
    port = free_port()
    log_path = os.path.join(os.path.dirname(comfyui), f"comfyui_{port}.log")
    cmd = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), *extra_args]
    log(f"$ {' '.join(cmd)}    (in {comfyui}; log {log_path})")
    with open(log_path, "w") as out:
        proc = subprocess.Popen(cmd, cwd=comfyui, stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    client = ComfyClient(f"http://127.0.0.1:{port}", timeout=10)
    t0 = time.time()
    try:
        info, last_answer = None, None
        while info is None:
            if proc.poll() is not None:
                raise RouteFailed(f"ComfyUI exited with {proc.returncode} during start-up; log {log_path}")
            if time.time() - t0 > startup_timeout:
                raise RouteFailed(f"ComfyUI did not answer within {startup_timeout}s ({last_answer}); log {log_path}")
            try:
                info = client.object_info()
            except ComfyClientError as e:  # not listening yet
                last_answer = e
                time.sleep(1)
        seconds = time.time() - t0
        ours = sorted(k for k, v in info.items() if v.get("python_module") == f"custom_nodes.{PACK}")
        page = f"/extensions/{PACK}/docs/CADAttribute.md"
        status, body = client.request(page)
        page_ok = status == 200 and body.decode("utf-8", "replace").startswith("# CAD Attribute")
        if status != 200:
            log(f"  GET {page}: HTTP {status}")
    except ComfyClientError as e:  # gone, or answering unlike ComfyUI, once it had started
        raise RouteFailed(str(e)) from None
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    with open(log_path, errors="replace") as f:
        text = f.read()
    failed = [line for line in text.splitlines() if "IMPORT FAILED" in line or "Cannot import" in line]
    # only the pack's count; core's own are counted (0.33.0's nodes_glsl needs comfy_angle, not installed here)
    failures = [line for line in failed if f"custom_nodes/{PACK}" in line]
    result = {"port": port, "startup_seconds": round(seconds, 1), "cad_nodes": len(ours),
              "import_failures": failures, "other_import_failures": len(failed) - len(failures),
              "help_page_served": page_ok, "log": log_path}
    log(f"  server: {json.dumps({k: v for k, v in result.items() if k != 'log'})}")
    if record is not None:
        record.append({"server": result})
    missing = sorted(set(expected_nodes()) - set(ours))
    if missing or failures or not page_ok:
        raise RouteFailed(f"server check failed: missing nodes {missing}, import failures {failures}, help page "
                          f"served {page_ok}; log {log_path}")
    return result


def route_clone(leg, work, record):
    where = os.path.join(work, f"clone-{leg}")
    os.makedirs(where)
    comfyui = fresh_comfyui(leg, where)
    python = overlay_venv(PY_075 if leg == "0.3.75" else PY_033, os.path.join(where, "venv"))
    nodes_dir = os.path.join(comfyui, "custom_nodes")
    # README, "Install into ComfyUI"
    run(["git", "clone", REPO, PACK], cwd=nodes_dir, record=record)
    run([python, "-m", "pip", "install", "-r", f"{PACK}/requirements.txt"], cwd=nodes_dir, record=record)
    check_server(python, comfyui, record=record)


def route_manager(work, record):
    where = os.path.join(work, "manager")
    os.makedirs(where)
    comfyui = fresh_comfyui("0.33.0", where)
    python = overlay_venv(PY_033, os.path.join(where, "venv"))
    run([python, "-m", "pip", "install", "-r", "manager_requirements.txt"], cwd=comfyui, record=record)
    version = run([python, "-m", "pip", "show", "comfyui_manager"], check=False).stdout
    record.append({"comfyui_manager": next((l.split()[-1] for l in version.splitlines() if l.startswith("Version")),
                                           "?")})
    cm_cli = os.path.join(where, "venv", "bin", "cm-cli")
    env = {"COMFYUI_PATH": comfyui, "COLUMNS": "160"}
    # A bare clone served by plain HTTP from 127.0.0.1, the way a public git host serves the repository.
    srv = os.path.join(where, "srv")
    os.makedirs(srv)
    bare = os.path.join(srv, f"{PACK}.git")
    run(["git", "clone", "--bare", REPO, bare])
    run(["git", "update-server-info"], cwd=bare)
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", srv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(1)
        # file:// has no host, so cm-cli does not take it as a URL (it looks the string up as a node name)
        local = run([cm_cli, "install", "--mode", "local", f"file://{bare}"], env=env, check=False, record=record)
        record.append({"file_url_installed": os.path.isdir(os.path.join(comfyui, "custom_nodes", PACK))})
        if os.path.isdir(os.path.join(comfyui, "custom_nodes", PACK)):
            log("  note: cm-cli installed from a file:// URL (the README says it does not): update the README")
            shutil.rmtree(os.path.join(comfyui, "custom_nodes", PACK))
        elif "not found" not in local.stdout:
            log("  note: cm-cli's answer to a file:// URL changed")
        url = f"http://127.0.0.1:{port}/{PACK}.git"
        done = run([cm_cli, "install", "--mode", "local", url], env=env, record=record)
        if "[INSTALLED]" not in done.stdout:
            raise RouteFailed(f"cm-cli install {url} did not report [INSTALLED]")
    finally:
        http.terminate()
        http.wait()
    installed = os.path.join(comfyui, "custom_nodes", PACK)
    if not os.path.isdir(installed):
        raise RouteFailed(f"cm-cli reported success but {installed} does not exist")
    commit = subprocess.check_output(["git", "-C", installed, "rev-parse", "HEAD"], text=True).strip()
    if commit != head_commit():
        raise RouteFailed(f"cm-cli installed {commit}, not HEAD {head_commit()}")
    check_server(python, comfyui, extra_args=["--enable-manager"], record=record)


def route_comfy_cli(work, record):
    where = os.path.join(work, "comfy-cli")
    os.makedirs(where)
    run([sys.executable, "-m", "venv", os.path.join(where, "venv")])
    python = os.path.join(where, "venv", "bin", "python")
    run([python, "-m", "pip", "install", "comfy-cli"], record=record)
    version = run([python, "-m", "pip", "show", "comfy-cli"], check=False).stdout
    record.append({"comfy_cli": next((l.split()[-1] for l in version.splitlines() if l.startswith("Version")), "?")})
    clone = os.path.join(where, PACK)
    run(["git", "clone", REPO, clone])
    comfy = os.path.join(where, "venv", "bin", "comfy")
    env = {"COLUMNS": "160"}
    done = run([comfy, "--skip-prompt", "--no-json", "node", "validate"], cwd=clone, env=env, record=record)
    if "All validation checks passed" not in done.stdout:
        raise RouteFailed("comfy node validate reported warnings (see its output above)")
    run([comfy, "--skip-prompt", "--no-json", "node", "pack"], cwd=clone, env=env, record=record)
    import zipfile
    with zipfile.ZipFile(os.path.join(clone, "node.zip")) as z:
        names = z.namelist()
    pages = [n for n in names if n.startswith("web/docs/")]
    record.append({"pack_files": len(names), "pack_help_pages": len(pages),
                   "pack_bytes": os.path.getsize(os.path.join(clone, "node.zip"))})
    if len(pages) != len(expected_nodes()) or "__init__.py" not in names:
        raise RouteFailed(f"node.zip holds {len(pages)} help pages and __init__.py: {'__init__.py' in names}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--routes", default=",".join(ROUTES), help=f"comma-separated, from {', '.join(ROUTES)}")
    parser.add_argument("--work", help="scratch folder (default: a new folder under the system temp folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    args = parser.parse_args()
    routes = [r for r in args.routes.split(",") if r]
    unknown = set(routes) - set(ROUTES)
    if unknown:
        parser.error(f"unknown routes {sorted(unknown)}")
    dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    if dirty:
        log("note: uncommitted changes are not checked (the routes clone HEAD):\n" + dirty)
    work = os.path.abspath(args.work) if args.work else tempfile.mkdtemp(prefix="cad-install-routes-")
    os.makedirs(work, exist_ok=True)
    log(f"checking {', '.join(routes)} of {REPO} at {head_commit()[:12]} in {work}")
    summary = {}
    for route in routes:
        log(f"\n=== {route} ===")
        record, t0 = [], time.time()
        try:
            if route.startswith("clone-"):
                route_clone(route.split("-", 1)[1], work, record)
            elif route == "manager":
                route_manager(work, record)
            else:
                route_comfy_cli(work, record)
            status = "passed"
        except (RouteFailed, subprocess.SubprocessError, OSError) as e:
            status = f"FAILED: {e}"
        summary[route] = {"status": status, "seconds": round(time.time() - t0), "record": record}
        log(f"=== {route}: {status} ({summary[route]['seconds']} s)")
    with open(os.path.join(work, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    log("\nsummary (details in " + os.path.join(work, "summary.json") + "):")
    for route, result in summary.items():
        log(f"  {route:14} {result['status']} ({result['seconds']} s)")
    if not args.keep:
        shutil.copy(os.path.join(work, "summary.json"), os.path.join(tempfile.gettempdir(), "cad-install-routes.json"))
        shutil.rmtree(work, ignore_errors=True)
        log(f"(scratch folder removed; summary kept as {os.path.join(tempfile.gettempdir(), 'cad-install-routes.json')})")
    return 0 if all(r["status"] == "passed" for r in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
