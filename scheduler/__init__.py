"""County scheduler: pairs strong schools with teaching points on one shared timetable."""
