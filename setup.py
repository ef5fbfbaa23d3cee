"""Builds flowers_tl._reader, the C++ JPEG decode-and-augment reader (pybind11 + libjpeg-turbo).

Everything else about the package is in pyproject.toml.
"""
import glob
import os
import sys
import tempfile

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

MISSING_LIBJPEG = (
    "flowers_tl: cannot compile and link against libjpeg-turbo (jpeglib.h / libjpeg): "
    "install the Debian package libjpeg62-turbo-dev (apt-get install libjpeg62-turbo-dev)"
)

PROBE = """
#include <stddef.h>
#include <stdio.h>
#include <jpeglib.h>
int main(void) {
  struct jpeg_decompress_struct cinfo;
  struct jpeg_error_mgr error;
  cinfo.err = jpeg_std_error(&error);
  jpeg_create_decompress(&cinfo);
  jpeg_crop_scanline(&cinfo, NULL, NULL);  /* libjpeg-turbo >= 1.5 only */
  jpeg_destroy_decompress(&cinfo);
  return 0;
}
"""


class BuildWithLibjpegCheck(build_ext):
    """Stops with one line naming the package to install when libjpeg-turbo is missing,
    instead of a page of compiler errors."""

    def build_extensions(self):
        with tempfile.TemporaryDirectory() as folder:
            source = os.path.join(folder, "probe.c")
            with open(source, "w") as handle:
                handle.write(PROBE)
            try:
                objects = self.compiler.compile([source], output_dir=folder,
                                                include_dirs=self.include_dirs)
                self.compiler.link_executable(objects, "probe", output_dir=folder,
                                              libraries=["jpeg"], library_dirs=self.library_dirs)
            except Exception:  # CompileError or LinkError: the header or the library is absent
                sys.exit(MISSING_LIBJPEG)
        super().build_extensions()


extension = Pybind11Extension(
    "flowers_tl._reader",
    sorted(glob.glob("csrc/*.cc")),
    cxx_std=17,
    libraries=["jpeg"],
    extra_compile_args=["-O3", "-Wall", "-Wextra", "-Wno-unused-parameter"],
)

setup(ext_modules=[extension], cmdclass={"build_ext": BuildWithLibjpegCheck})
