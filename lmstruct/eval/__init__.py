"""lmstruct.eval"""
