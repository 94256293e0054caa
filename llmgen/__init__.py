"""llmgen: compile a model spec into one self-contained training program.

Pipeline (each stage a module, no stage imports a later one):
  spec -> forward graph -> autodiff -> optimizer -> passes -> codegen -> build -> run
"""

__version__ = "0.1.0"
