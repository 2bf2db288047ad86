package try

import "github.com/millrace/millrace/engine"

// Compiled gives tests the built observers of a set.
func Compiled(s *Set) []*engine.Observer { return s.obs }
