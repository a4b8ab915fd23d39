// One translation unit holding block_linear and its bindings alone, for the builds of one
// named instruction set that the tests make (engine.kernels.load_block_linear_variant): a
// single unit keeps each extra build to one compile of the torch headers.
#define TESSERA_BLOCK_LINEAR_ONLY
#include "block_linear.cpp"
#include "module.cpp"
