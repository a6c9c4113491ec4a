"""Where CAD's files live in ComfyUI's model folders: the models/cad/ folder (registered here), its listing, and new
numbered files for a filename_prefix in any model folder (models/cad/, models/loras/), never over an existing one.
The Save/Load and LoRA nodes use these; they are ComfyUI mechanics (folder_paths), so they live in the bridge."""
import os

import folder_paths

from ...cad_core import CADError

FOLDER = "cad"
folder_paths.add_model_folder_path(FOLDER, os.path.join(folder_paths.models_dir, FOLDER), is_default=True)


def cad_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(FOLDER) if f.endswith(".safetensors")]


def prefix_problem(filename_prefix, folder: str = FOLDER) -> str | None:
    """Why a filename_prefix cannot name a file in models/<folder>/, or None."""
    if not isinstance(filename_prefix, str):
        return f"filename_prefix must be text, got {type(filename_prefix).__name__}."
    shown = repr(filename_prefix if len(filename_prefix) <= 80 else filename_prefix[:80] + "…")
    bad = sorted({f"U+{ord(c):04X}" for c in filename_prefix if ord(c) < 32 or ord(c) == 127})
    if bad:
        return (f"filename_prefix {shown} contains control characters ({', '.join(bad[:5])}), which no file name "
                f"may hold. Use letters, digits, '_', '-' and '/' for subfolders, e.g. 'cad/cat_erase'.")
    parts = filename_prefix.replace("\\", "/").split("/")
    if os.path.isabs(filename_prefix) or ".." in parts:
        return (f"filename_prefix {shown} must be a relative name inside models/{folder}/ (no absolute paths, "
                f"no '..'), e.g. 'cad/cat_erase'.")
    if not parts[-1].strip(". "):
        return (f"filename_prefix {shown} has no file name (it is empty or only dots), so the file would be hidden "
                f"or nameless. Give it a name, e.g. 'cad/cat_erase'.")
    return None


def save_new_file(filename_prefix: str, write, folder: str = FOLDER) -> str:
    """write(path) into a new numbered file for the prefix inside models/<folder> (ComfyUI's first path for that
    model folder), never over an existing one: the counter moves on while a name is taken (cad_core's writers
    create files exclusively)."""
    problem = prefix_problem(filename_prefix, folder)
    if problem:
        raise CADError(problem)
    root = _folder_root(folder)
    try:
        folder, name, counter, _, _ = folder_paths.get_save_image_path(filename_prefix, root)
    except Exception as e:  # ComfyUI raises a bare Exception for paths outside the folder
        raise CADError(f"Cannot save with filename_prefix '{filename_prefix}': {e}") from None
    os.makedirs(folder, exist_ok=True)
    for number in range(counter, counter + 100_000):
        try:
            return write(os.path.join(folder, f"{name}_{number:05}_.safetensors"))
        except FileExistsError:
            continue
    raise CADError(f"models/{folder}/ already holds 100,000 files named '{name}_NNNNN_': choose another prefix.")


def _folder_root(folder: str) -> str:
    """Where new files of a model folder go: ComfyUI's first path for it."""
    return os.path.abspath(folder_paths.get_folder_paths(folder)[0])


def folder_relative(path: str, folder: str = FOLDER) -> str:
    """A file save_new_file wrote, named as ComfyUI lists the files of that model folder."""
    return os.path.relpath(path, _folder_root(folder))



def cad_file_path(file: str) -> str:
    """The full path of a file listed in models/cad/; refused when it is not there."""
    path = folder_paths.get_full_path(FOLDER, file)
    if path is None:
        raise CADError(f"'{file}' is not in models/{FOLDER}/. Put CAD files there and refresh (press R).")
    return path


def cad_file_changed(file: str):
    """IS_CHANGED of the Load nodes: the file's modification time, so a rewritten file is read again."""
    path = folder_paths.get_full_path(FOLDER, file)
    return os.path.getmtime(path) if path else file
