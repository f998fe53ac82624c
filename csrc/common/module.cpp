// The Python module sparsedistill._C. It holds no Python functions: importing it loads this
// library, whose TORCH_LIBRARY_IMPL blocks register the native kernels with the dispatcher.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
