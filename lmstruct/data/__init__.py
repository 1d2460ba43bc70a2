"""lmstruct.data"""
