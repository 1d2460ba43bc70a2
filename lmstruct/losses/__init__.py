"""lmstruct.losses"""
